# The C module (src/vigil/stream/_slide.c) has the interface of its Python twin, vigil.stream.slide:
# typed from there, so the two cannot drift apart.
from vigil.stream.slide import Slide as Slide
from vigil.stream.slide import datetimes_ms as datetimes_ms

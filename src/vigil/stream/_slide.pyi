# The C module's interface (src/vigil/stream/_slide.c); its Python twin is vigil.stream.slide.
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

class Slide:
    def __init__(
        self, size: int, lateness: int, add_up_at_most: int = 64, max_key_chars: int = ...
    ) -> None: ...
    def update(
        self,
        keys: list[str],
        times: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
        watermark: int,
        accepted: npt.NDArray[np.bool_],
        count: npt.NDArray[np.int64],
        total: npt.NDArray[np.float64],
    ) -> tuple[int, int, int]: ...
    def feed(
        self, keys: list[str], times: npt.NDArray[np.int64], values: npt.NDArray[np.float64]
    ) -> None: ...
    def keys(self) -> int: ...
    def entries(self) -> int: ...

def datetimes_ms(times: Sequence[object], out: npt.NDArray[np.int64]) -> int: ...

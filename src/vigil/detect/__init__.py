"""Detection: declarative rules over canonical events, alerts and decisions out.

- :mod:`vigil.detect.rules` - rule files: YAML loading with positions (``loader``), the
  validation pass (``validate``, ``parse``), the models (``models``) and the explicit
  registry of rule kinds (``registry``);
- :mod:`vigil.detect.kinds` - one module per rule kind (threshold, sequence, propagation,
  intel, exposure, lookalike, deviation, linked), each a parser and a detector over keyed
  state (``base`` is their interface);
- :mod:`vigil.detect.engine` - rules compiled into stream operators (the same in memory and
  on Kafka), and the re-keying stage; :mod:`vigil.detect.app` - the Kafka applications and
  the intel feed; :mod:`vigil.detect.alerts` - alert ids, explanations, decisions;
- :mod:`vigil.detect.intel` - the indicator index; :mod:`vigil.detect.cases` - running a
  rule file's example cases; :mod:`vigil.detect.eval` - quality against the simulator.
"""

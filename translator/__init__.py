"""revnat64 data plane: a sans-IO stateless IP/ICMP translator (SIIT, RFC 7915).

The public API is deliberately narrow::

    from translator import Translator, TranslatorSettings, Tables, Pool4
    from translator import Verdict, Action, DropReason

    tr = Translator(settings, Tables.build(eam=[...], prefix=None), Pool4("198.51.100.0/24"))
    verdict = tr.translate(packet, now)   # never raises

Nothing here performs I/O, reads clocks or logs: the shell passes ``now``
(monotonic seconds) and acts on the returned ``Verdict``.  Module map:

* ``headers``  wire layouts and constants;   ``checksum`` RFC 1071/1624 arithmetic;
* ``tables``   EAM (RFC 7757) + RFC 6052 prefix, immutable;
* ``pool``     pool4 leases, the only mutable mapping state;
* ``ip6to4`` / ``ip4to6``  RFC 7915 §5 / §4;   ``icmp``  ICMP tables and error builders;
* ``engine``   ``Translator`` and ``TranslatorSettings``;  ``verdict`` the result types.
"""

from .engine import Translator, TranslatorSettings
from .pool import Pool4
from .tables import Tables
from .verdict import Action, DropReason, Verdict

__all__ = [
    "Action",
    "DropReason",
    "Pool4",
    "Tables",
    "Translator",
    "TranslatorSettings",
    "Verdict",
]

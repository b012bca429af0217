"""Rights statements to Europeana's reusability levels: the one mapping of eic (the Search API's ``reusability``
filter, a dump's or an OAI-PMH record's ``edm:rights``, the sandbox's records).

Europeana's own rule, a URI prefix match after https is read as http (corelib's ``RightReusabilityCategorizer``,
facts in ``shared/europeana_bulk.md`` §C4). Creative Commons URIs carry a version and a port (``/by/4.0/``,
``/by-sa/3.0/nl/``), hence prefixes. A statement in none of the lists has no level: the Search API's three filters
never find it, so a harvest leaves it out too.
"""

from __future__ import annotations

OPEN = (
    "http://creativecommons.org/publicdomain/mark/",
    "http://creativecommons.org/publicdomain/zero/1.0/",
    "http://creativecommons.org/licenses/by/",
    "http://creativecommons.org/licenses/by-sa/",
)
RESTRICTED = (
    "http://creativecommons.org/licenses/by-nc/",
    "http://creativecommons.org/licenses/by-nc-sa/",
    "http://creativecommons.org/licenses/by-nc-nd/",
    "http://creativecommons.org/licenses/by-nd/",
    "http://www.europeana.eu/rights/out-of-copyright-non-commercial/",
    "http://rightsstatements.org/vocab/InC-EDU/1.0/",
    "http://rightsstatements.org/vocab/NoC-NC/1.0/",
    "http://rightsstatements.org/vocab/NoC-OKLR/1.0/",
)
PERMISSION = (
    "http://www.europeana.eu/rights/rr-f/",
    "http://www.europeana.eu/rights/rr-p/",
    "http://www.europeana.eu/rights/rr-r/",
    "http://www.europeana.eu/rights/unknown/",
    "http://www.europeana.eu/rights/test-orphan-work-test/",
    "http://rightsstatements.org/vocab/InC/1.0/",
    "http://rightsstatements.org/vocab/InC-OW-EU/1.0/",
    "http://rightsstatements.org/vocab/CNE/1.0/",
)
LEVELS = {"open": OPEN, "restricted": RESTRICTED, "permission": PERMISSION}


def reusability(rights: str | None) -> str | None:
    """The level (open, restricted, permission) of a rights statement's URI, or None for one in no list."""
    if not rights:
        return None
    uri = rights.strip()
    if uri.startswith("https://"):
        uri = "http://" + uri.removeprefix("https://")
    if not uri.endswith("/"):  # "…/InC/1.0" as some providers write it is the statement "…/InC/1.0/"
        uri += "/"
    for level, prefixes in LEVELS.items():
        # by-nc/ must not be read as by/: the prefixes end in "/", so "licenses/by/" never matches "licenses/by-nc/"
        if uri.startswith(prefixes):
            return level
    return None

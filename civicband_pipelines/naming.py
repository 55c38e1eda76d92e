"""Municipality subdomains and document types: the two partition dimensions, validated."""

import re

# document type -> upstream table name
TABLES = {"agenda": "agendas", "minutes": "minutes"}
DOCUMENT_TYPES = tuple(TABLES)

# Lowercase DNS labels joined by dots ("oakland.ca", "st-louis.mo"). A subdomain ends up in a
# host name and a URL path, so nothing else may pass.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_SUBDOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")  # fullmatch: "$" would let a trailing newline through


class InvalidSubdomain(ValueError):
    pass


def validate_subdomain(subdomain: str) -> str:
    """Return the subdomain if it is a safe civic.band subdomain, else raise InvalidSubdomain."""
    if not isinstance(subdomain, str) or len(subdomain) > 200 or not _SUBDOMAIN.fullmatch(subdomain):
        raise InvalidSubdomain(
            f"invalid subdomain {subdomain!r}: expected lowercase letters, digits, hyphens and dots "
            "such as 'oakland.ca' or 'st-louis.mo'"
        )
    return subdomain


def validate_document_type(document_type: str) -> str:
    if document_type not in TABLES:
        raise ValueError(f"invalid document type {document_type!r}: expected one of {', '.join(TABLES)}")
    return document_type

"""NVIDIA's security bulletins for Triton Inference Server, and the NGC release that fixes each.

Source: NVIDIA's CSAF advisories (github.com/NVIDIA/product-security, ``YEAR/ID/ID.json``:
``product_status.fixed`` of each CVE); a bulletin's ``fixed_in`` is the newest release any of its
CVEs needed. Bulletins whose fixes predate NGC 24.12 are left out. Add a row when NVIDIA publishes a
bulletin; tests/triton/test_deploy.py refuses a deployment release older than any row's fix.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Advisory:
    """One NVIDIA security bulletin for Triton.

    Attributes:
        bulletin: NVIDIA's bulletin id (nvidia.custhelp.com/app/answers/detail/a_id/ID).
        published: its date, ``YYYY-MM-DD``.
        fixed_in: the first NGC release (``YY.MM``) that fixes all its CVEs.
        cves: its CVE ids.
        what: the kind of flaw, for the README.
    """

    bulletin: str
    published: str
    fixed_in: str
    cves: tuple[str, ...]
    what: str


ADVISORIES = (
    Advisory("5612", "2025-02-11", "24.12", ("CVE-2024-53880",), "integer overflow in model loading"),
    Advisory("5687", "2025-08-04", "25.07", (
        "CVE-2025-23268", "CVE-2025-23310", "CVE-2025-23311", "CVE-2025-23317", "CVE-2025-23318", "CVE-2025-23319",
        "CVE-2025-23320", "CVE-2025-23321", "CVE-2025-23322", "CVE-2025-23323", "CVE-2025-23324", "CVE-2025-23325",
        "CVE-2025-23326", "CVE-2025-23327", "CVE-2025-23331", "CVE-2025-23333", "CVE-2025-23334", "CVE-2025-23335",
    ), "unauthenticated stack overflow over HTTP (23310/23311); the python backend's shared-memory chain to "
       "remote code execution (23319/23320/23334)"),
    Advisory("5691", "2025-09-16", "25.08", (
        "CVE-2025-23268", "CVE-2025-23316", "CVE-2025-23328", "CVE-2025-23329", "CVE-2025-23336",
    ), "OS command injection in the python backend (23316, CVSS 9.8); memory corruption through shared memory (23329)"),
    Advisory("5723", "2025-11-11", "25.09", ("CVE-2025-33202",), "stack overflow on extra-large payloads"),
    Advisory("5734", "2025-12-02", "25.10", ("CVE-2025-33201", "CVE-2025-33211"), "denial of service on extra-large payloads (33201)"),
    Advisory("5790", "2026-03-24", "26.01", ("CVE-2025-33238", "CVE-2025-33254", "CVE-2026-24158"), "race conditions; large compressed HTTP payloads"),
    Advisory("5816", "2026-04-07", "26.02", (
        "CVE-2026-24146", "CVE-2026-24147", "CVE-2026-24173", "CVE-2026-24174", "CVE-2026-24175",
    ), "crashes on malformed requests; path traversal through a model configuration"),
    Advisory("5828", "2026-05-19", "26.03", (
        "CVE-2026-24206", "CVE-2026-24207", "CVE-2026-24208", "CVE-2026-24209", "CVE-2026-24210", "CVE-2026-24213",
        "CVE-2026-24214", "CVE-2026-24215",
    ), "authentication bypass (24207, CVSS 9.8; 24206); path traversal; DALI backend"),
    Advisory("5848", "2026-06-30", "26.04", ("CVE-2026-24264", "CVE-2026-24266"), "data amplification; use after free"),
    Advisory("5853", "2026-07-14", "26.05", (
        "CVE-2026-47476", "CVE-2026-47477", "CVE-2026-47478", "CVE-2026-47479", "CVE-2026-47480", "CVE-2026-47481",
        "CVE-2026-47482",
    ), "stack overflow, resource exhaustion, authentication bypass (47481)"),
    Advisory("5860", "2026-08-04", "26.03", ("CVE-2026-47487",), "files outside the model repository read or written"),
    Advisory("5865", "2026-08-18", "26.06", (
        "CVE-2026-47606", "CVE-2026-47627", "CVE-2026-47628", "CVE-2026-47629", "CVE-2026-47630",
    ), "path traversal (47627, CVSS 9.8), absolute path traversal to code execution"),
    Advisory("5875", "2026-09-08", "26.07", ("CVE-2026-16497", "CVE-2026-47625"),
             "denial of service (excessive iteration), missing authorization"),
)


def release_key(release: str) -> tuple[int, int]:
    """``"26.07"`` -> ``(26, 7)``, so that releases compare in time order.

    Raises:
        ValueError: not a ``YY.MM`` NGC release.
    """
    year, _, month = release.partition(".")
    if not (year.isdigit() and month.isdigit() and 1 <= int(month) <= 12):
        raise ValueError(f"{release!r} is not an NGC release such as 26.09 (YY.MM)")
    return int(year), int(month)


def unfixed(release: str) -> list[Advisory]:
    """The bulletins that ``release`` (``YY.MM``) does not fix, oldest first."""
    return [a for a in ADVISORIES if release_key(release) < release_key(a.fixed_in)]


def newest_fix() -> str:
    """The newest release any bulletin requires: deploy nothing older."""
    return max((a.fixed_in for a in ADVISORIES), key=release_key)

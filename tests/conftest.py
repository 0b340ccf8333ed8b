"""Shared pytest options."""

from __future__ import annotations


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--fuzz-long",
        action="store_true",
        default=False,
        help="run the differential fuzzer for 10,000 specs instead of the CI budget",
    )

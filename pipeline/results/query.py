"""The reading commands' side of SQL: their options (``ReadConfig``), `top`, and how rows are printed."""
from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
from dataclasses import dataclass, field

from pipeline.base.options import opt
from pipeline.base.sql import run_sql
from pipeline.base.storage import StorageConfig, StorageOptions
from pipeline.base.store import MEMORY_FRACTION, QueryLimits, parse_as_of

DEFAULT_MIN_SCORE = 0.5  # "flagged" for top/contradictions without a calibration
TOP_COLUMNS = ("uri", "score", "frac_anom_conf", "max_anom_conf", "map_uri", "preview_uri", "scan_date", "run_id",
               "weights_untrained")


def parse_since(text: str | None) -> dt.date | None:
    """``--since``: a date YYYY-MM-DD (ValueError naming the option otherwise)."""
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError as e:
        raise ValueError(f"--since {text!r} is not a date YYYY-MM-DD: {e}") from None


@dataclass(frozen=True)
class ReadConfig(StorageOptions):
    """Settings of the commands that read results (`query`, `top`, `contradictions`); the command
    line is derived from these fields."""

    output: str = field(metadata=opt("the scan's --output (local directory or s3:// prefix)", positional=True))
    sql: str = field(default="", metadata=opt('e.g. "SELECT uri, score FROM results ORDER BY score DESC LIMIT 10"',
                                              positional=True, commands=("query",)))
    k: int = field(default=50, metadata=opt("how many rows", commands=("top", "contradictions")))
    min_score: float | None = field(default=None, metadata=opt(
        f"flagged: score at least this (default {DEFAULT_MIN_SCORE}; with a calibration its verdict decides)",
        commands=("top", "contradictions")))
    since: str | None = field(default=None, metadata=opt("only scans on or after this date (YYYY-MM-DD)",
                                                          commands=("top",)))
    calibrated: bool = field(default=False, metadata=opt(
        "use the newest calibration under OUTPUT: only what its verdict flags", commands=("top", "contradictions")))
    calibration: str | None = field(default=None, metadata=opt(
        "a calibration file ('latest': the newest under OUTPUT): the views get source, threshold, verdict, "
        "verdict_reason"))
    format: str = field(default="table", metadata=opt("printed format", choices=("table", "csv", "json")))
    as_of: str | None = field(default=None, metadata=opt(
        "answer from the table as it was: a version number, or a time (ISO 8601, UTC unless a zone is given)",
        commands=("query", "top")))
    timeout: float = field(default=300.0, metadata=opt("seconds before the statement is interrupted (exit status 2)",
                                                       commands=("query",)))
    memory_limit: str | None = field(default=None, metadata=opt(
        f"DuckDB memory limit, e.g. 2GB (default: {MEMORY_FRACTION:.0%} of this machine's memory; beyond it DuckDB "
        "spills to a temporary folder, then fails the statement)", commands=("query",)))
    threads: int | None = field(default=None, metadata=opt("DuckDB threads (default: all cores)", commands=("query",)))

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"--k must be >= 1, got {self.k}")
        if not self.timeout > 0 or (self.threads is not None and self.threads < 1):
            raise ValueError(f"--timeout must be > 0 and --threads >= 1, got {self.timeout}, {self.threads}")
        parse_as_of(self.as_of)
        parse_since(self.since)

    def calibration_spec(self) -> str | None:
        """The calibration to apply: a file, "latest", or None."""
        return self.calibration or ("latest" if self.calibrated else None)

    def flag_score(self) -> float:
        """--min-score as given, else the default without a calibration, else 0 (the verdict decides)."""
        if self.min_score is not None:
            return self.min_score
        return 0.0 if self.calibration_spec() else DEFAULT_MIN_SCORE

    def limits(self) -> "QueryLimits":
        return QueryLimits(timeout_s=self.timeout, memory_limit=self.memory_limit, threads=self.threads)

    def since_date(self) -> dt.date | None:
        return parse_since(self.since)


def top(output: str, k: int = 50, min_score: float = DEFAULT_MIN_SCORE, since: dt.date | None = None,
        storage: StorageConfig | None = None, columns: tuple[str, ...] = TOP_COLUMNS, where: str = "",
        order: str = "score DESC", connector=None, as_of=None,
        limits: QueryLimits | None = None) -> tuple[list[str], list[tuple]]:
    """The highest-scoring images by their latest scan (view ``latest``), values bound as parameters.

    An image whose latest scan failed is left out, whatever an earlier scan scored. ``columns``,
    ``where`` (more conditions: fixed SQL, never values), ``order`` and ``connector`` serve views
    with more columns (``pipeline.results.calibration.top_calibrated``).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    sql = (f"SELECT {', '.join(columns)} FROM latest WHERE status = 'ok' AND score >= ? {where} "
           + ("AND scan_date >= ? " if since else "")
           + f"ORDER BY {order}, uri LIMIT ?")
    params: list = [min_score] + ([since.isoformat()] if since else []) + [k]
    return run_sql(output, sql, params, storage, connector, as_of, limits)


def _plain(v):
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    return v


def _cell(v) -> str:
    """A table cell: numbers to 4 significant digits (full precision is in CSV and JSON)."""
    if v is None:
        return ""
    if isinstance(v, (float, decimal.Decimal)):
        return f"{float(v):.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_cell(x) for x in v) + "]"
    return str(_plain(v))


def format_rows(cols: list[str], rows: list[tuple], fmt: str) -> str:
    """Render as an aligned text table (numbers to 4 significant digits), CSV or JSON (a list of objects)."""
    if fmt == "json":
        return json.dumps([{c: _plain(v) for c, v in zip(cols, r)} for r in rows], indent=1)
    if fmt == "csv":  # \n line endings (the shell's), and no trailing newline: print adds the last one
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        w.writerows([[_plain(v) for v in r] for r in rows])
        return buf.getvalue().removesuffix("\n")
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}; expected table, csv or json")
    cells = [[_cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    lines.append(f"({len(rows)} rows)")
    return "\n".join(lines)

"""The Prometheus text format (0.0.4) and OpenMetrics (1.0.0) of circuit's metric families,
written here to their specs (prometheus-client's parser reads them back in the tests): a
scrape of 5,000 targets is ≈ 35,000 samples, each one `%` of a per-family template."""

from circuit_common.metrics import COUNTER, INFO, Family

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
SPECIAL = str.maketrans({"\\": "\\\\", "\n": "\\n", '"': '\\"'})


def escape(value: str) -> str:
    """A label value (or OpenMetrics help) with backslash, newline and quote escaped."""
    return value.translate(SPECIAL) if ("\\" in value or "\n" in value or '"' in value) \
        else value


def number(value) -> str:
    return str(value) if type(value) is int else repr(float(value))


def render(families: list[Family], openmetrics: bool = False) -> str:
    """The families as one exposition; OpenMetrics ends with `# EOF`."""
    lines = []
    for family in families:
        sample = family.name + {COUNTER: "_total", INFO: "_info"}.get(family.kind, "")
        declared = family.name if openmetrics else sample
        kind = family.kind if openmetrics or family.kind != INFO else "gauge"
        help_text = escape(family.help) if openmetrics \
            else family.help.replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"# HELP {declared} {help_text}")
        lines.append(f"# TYPE {declared} {kind}")
        if openmetrics and family.unit:
            lines.append(f"# UNIT {declared} {family.unit}")
        if family.labels:
            template = sample + "{" + ",".join(f'{label}="%s"' for label in family.labels) \
                + "} %s"
            lines += [template % (*map(escape, values), number(value))
                      for values, value in family.samples]
        else:
            lines += [f"{sample} {number(value)}" for _, value in family.samples]
    if openmetrics:
        lines.append("# EOF")
    return "\n".join(lines) + "\n"

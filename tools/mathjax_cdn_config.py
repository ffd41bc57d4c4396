"""Write a copy of the book's _config.yml that loads MathJax from Sphinx's default CDN instead of the book's copy.

    python tools/mathjax_cdn_config.py _config.yml _build/_config_cdn.yml

`make book` uses it where npm is missing (and no MathJax was fetched before): the copy drops the two settings that
point at the offline MathJax (the ``_build/mathjax`` entry of ``sphinx.config.html_static_path``,
and ``mathjax_path``) and keeps everything else: the book's own static files (its stylesheet) and
the MathJax macros. Jupyter Book reads it with ``jupyter-book build . --config _build/_config_cdn.yml``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

OFFLINE_MATHJAX_DIR = "_build/mathjax"


def cdn_config(config: dict) -> dict:
    """The configuration without the offline-MathJax settings (a new dict; the input is not changed)."""
    sphinx = dict(config.get("sphinx") or {})
    settings = {k: v for k, v in (sphinx.get("config") or {}).items() if k != "mathjax_path"}
    static = [p for p in settings.get("html_static_path", []) if p != OFFLINE_MATHJAX_DIR]
    if static:
        settings["html_static_path"] = static
    else:
        settings.pop("html_static_path", None)
    return {**config, "sphinx": {**sphinx, "config": settings}}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    source, target = map(Path, args)
    config = yaml.safe_load(source.read_text())
    target.parent.mkdir(parents=True, exist_ok=True)
    header = f"# Generated from {source} by tools/mathjax_cdn_config.py: MathJax from the CDN. Do not edit.\n"
    target.write_text(header + yaml.safe_dump(cdn_config(config), sort_keys=False, allow_unicode=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

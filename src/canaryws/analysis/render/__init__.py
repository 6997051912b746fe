"""Renderers of a canary report (the dict :func:`canaryws.analysis.judge.judge` returns).

- :mod:`.rows`: what every renderer shows, as rows of formatted cells (the report read
  defensively: a missing key, a ``None`` or an empty cohort shows as "—");
- :mod:`.terminal`: :func:`~.terminal.render_terminal` prints them with rich, laid out for
  80 columns;
- :mod:`.html`: :func:`~.html.render_html` returns one self-contained HTML page: the same
  tables, then the plots;
- :mod:`.plots`: the cohorts' plots side by side, inline SVG (matplotlib is imported only
  when a page is rendered).
"""

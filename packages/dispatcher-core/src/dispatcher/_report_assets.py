"""The report page's style sheet and its table-sorting script, inlined into every page so
that it works offline."""

__all__ = ["CSS", "SCRIPT"]

CSS = """
:root{--fg:#1d2330;--muted:#5b6577;--line:#dfe3ea;--bad:#c62828;--warn:#b26a00;--good:#2e7d32}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
color:var(--fg);margin:0 auto;padding:20px 28px 48px;max-width:1180px;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:26px 0 8px;display:inline-block}
.sub{color:var(--muted);margin:0}.hint,.note{color:var(--muted);font-size:12.5px;margin:2px 0 8px}
.error{color:var(--bad);font-weight:600;margin:8px 0 0}
.badge{font-size:12px;vertical-align:middle;padding:2px 8px;border-radius:10px;color:#fff}
.badge.good{background:var(--good)}.badge.bad{background:var(--bad)}
.badge.warn{background:var(--warn)}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:18px 0 4px}
.card{border:1px solid var(--line);border-radius:8px;padding:8px 14px;min-width:96px}
.card .v{font-size:20px;font-weight:650;font-variant-numeric:tabular-nums}
.card .k{color:var(--muted);font-size:12px}
.card.bad .v{color:var(--bad)}.card.warn .v{color:var(--warn)}.card.cached .v{color:#0b8f9c}
svg.timeline{display:block;border:1px solid var(--line);border-radius:6px;background:#fff}
svg .w{font-size:11px;fill:var(--fg)}svg .t{font-size:10px;fill:var(--muted)}
svg .grid{stroke:#e6e9ef;stroke-width:1}svg .wait{stroke:#9aa3b2;stroke-width:1.2}
svg rect[rx]:hover{stroke:#000;stroke-width:1.5}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;margin:8px 0;font-size:12.5px;color:var(--muted)}
.legend i,.sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;
vertical-align:-1px}
.legend i.lost{background:#4e79a7;opacity:.35;outline:1px dashed #555}
.legend i.abandoned{background:repeating-linear-gradient(45deg,#aaa 0 2px,#ddd 2px 4px)}
table{border-collapse:collapse;width:100%;font-size:13px;font-variant-numeric:tabular-nums}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:#f4f6f9;position:sticky;top:0;cursor:pointer;user-select:none;white-space:nowrap}
th.n,td.n{text-align:right}td.n,td.lab{white-space:nowrap}tbody tr:hover{background:#f8fafc}
td.bad{color:var(--bad);font-weight:600}td.warn{color:var(--warn)}
td.err{color:var(--bad);max-width:340px;overflow-wrap:anywhere}
details>summary{cursor:pointer}details>summary h2{margin:26px 0 8px}
section>details{margin:4px 0}
pre{background:#f6f8fa;border:1px solid var(--line);border-radius:6px;padding:10px;
overflow:auto;font-size:12px;white-space:pre-wrap}
"""

# Click a column header to sort by it (numbers by their data-v value); click again to flip.
SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var dir = th.dataset.dir === "asc" ? -1 : 1;
      th.dataset.dir = dir === 1 ? "asc" : "desc";
      function key(row) {
        var cell = row.cells[col];
        return cell.dataset.v !== undefined ? parseFloat(cell.dataset.v) : cell.textContent;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        return (x < y ? -1 : x > y ? 1 : 0) * dir;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""

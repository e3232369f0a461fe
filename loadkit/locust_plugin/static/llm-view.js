// loadkit's additions to Locust's web UI: the live charts of the LLM tab (uPlot) and the
// group headings of the start form's custom parameters. Served from the loadkit package:
// nothing is fetched from outside (users run offline).
(function () {
  "use strict";

  const POLL_MS = 2000;
  const TAB = "llm";
  const VIEW_ID = "loadkit-llm-view";
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
  const SLO_COLOR = "#555";

  // Figures read as in the report: loadkit/numbers.py's rules (static/numbers.js, loaded first).
  const N = window.loadkitNumbers;
  const fmt = N.number;
  const count = N.count;

  // An axis tick: at most 3 decimals, fewer as values grow, trailing zeros dropped.
  function tick(value) {
    if (value === null || value === undefined || !Number.isFinite(value)) return "-";
    const size = Math.abs(value);
    const digits = size >= 100 ? 0 : size >= 10 ? 1 : size >= 1 ? 2 : 3;
    return value.toLocaleString("en-US", { maximumFractionDigits: digits });
  }

  function onLlmTab() {
    return new URLSearchParams(window.location.search).get("tab") === TAB;
  }

  function groupName(group) {
    return (group.model + " " + group.speed).trim();
  }

  function sloLine(slo, t) {
    return {
      series: { label: slo.label, stroke: SLO_COLOR, width: 1, dash: [6, 4], value: (u, v) => fmt(v) },
      values: t.map(() => slo.threshold),
    };
  }

  function appliesTo(slo, group) {
    return slo.group === null || (slo.group[0] === group.model && (!slo.group[1] || slo.group[1] === group.speed));
  }

  // Each chart: a title, its uPlot series and their values (one array per series, over t).
  function chartSpecs(data) {
    const t = data.t;
    const specs = [];
    const line = (label, color, values, extra) => ({
      series: Object.assign({ label: label, stroke: color, width: 2, spanGaps: false, value: (u, v) => fmt(v) }, extra || {}),
      values: values,
    });
    data.groups.forEach((group, i) => {
      const color = COLORS[i % COLORS.length];
      const f = group.figures;
      const lines = [
        line("p50", color, f.ttft_p50),
        line("p95", color, f.ttft_p95, { dash: [10, 4] }),
        line("p99", color, f.ttft_p99, { dash: [2, 3] }),
      ];
      data.slos.filter((s) => s.chart === "ttft" && appliesTo(s, group)).forEach((s) => lines.push(sloLine(s, t)));
      specs.push({ key: "ttft " + groupName(group), title: "TTFT ms - " + groupName(group), lines: lines });
    });
    const perGroup = (key) => data.groups.map((g, i) => line(groupName(g), COLORS[i % COLORS.length], g.figures[key]));
    const otps = perGroup("otps_p50");
    data.slos.filter((s) => s.chart === "otps").forEach((s) => otps.push(sloLine(s, t)));
    specs.push({ key: "otps", title: "OTPS p50 (output tokens/s per request)", lines: otps });
    specs.push({ key: "output", title: "Output tokens/s", lines: perGroup("output_tps") });
    const errors = [];
    data.groups.forEach((g, i) => {
      const color = COLORS[i % COLORS.length];
      errors.push(line("429s/s " + groupName(g), color, g.figures.responses_429_per_s));
      errors.push(line("fallbacks/s " + groupName(g), color, g.figures.fallbacks_per_s, { dash: [8, 4] }));
    });
    specs.push({ key: "errors", title: "429 responses and fallbacks per second", lines: errors });
    const headroom = [];
    data.groups.forEach((g, i) => {
      const color = COLORS[i % COLORS.length];
      headroom.push(line("requests left " + groupName(g), color, g.figures.requests_remaining, { scale: "requests" }));
      headroom.push(line("tokens left " + groupName(g), color, g.figures.tokens_remaining, { scale: "tokens", dash: [8, 4] }));
    });
    specs.push({ key: "headroom", title: "Rate-limit headroom (requests left: left axis; tokens left: right axis, dashed)", lines: headroom, twoAxes: true });
    if (data.open_loop) {
      const late = [];
      data.groups.forEach((g, i) => {
        const color = COLORS[i % COLORS.length];
        late.push(line("p50 " + groupName(g), color, g.figures.lateness_p50));
        late.push(line("p99 " + groupName(g), color, g.figures.lateness_p99, { dash: [2, 3] }));
      });
      specs.push({ key: "lateness", title: "Open-loop start lateness ms (actual - scheduled start)", lines: late });
    }
    return specs;
  }

  // Each model x speed of the summary, then "all".
  function perGroup(summary) {
    return summary.groups.map((g) => [groupName(g), g]).concat([["all", summary.total]]);
  }

  // The summary's breakdowns, when the run has them, as tables: the columns of the HTML
  // report's (loadkit/report_breakdown.py) and of the printed summary.
  function breakdownSpecs(summary) {
    const specs = [];
    const trace = summary.trace;
    if (trace) {
      specs.push({
        key: "trace",
        title: "Trace replay",
        headers: ["trace", "format", "entries", "speed-up", "processes", "completed"],
        rows: [[trace.path, trace.format, count(trace.entries), trace.speedup + "x" + (trace.loop ? ", looped" : ""), count(trace.processes),
          trace.completed ? "every entry was sent and answered" : "not yet every entry sent and answered"]],
      });
    }
    const content = perGroup(summary).filter(([, g]) => g.content);
    if (content.length) {
      specs.push({
        key: "content",
        title: "Thinking, text and tools (TTFT-text: to the first text token; tool round trip: tool call's end to the first token after its result)",
        headers: ["Model x speed", "Requests", "TTFT p50 ms", "TTFT-text p50 ms", "TTFT-text p95 ms", "Thinking tokens", "Text tokens",
          "Tool-input tokens", "Tool calls", "Tool round trip p50 ms", "Tool round trip p95 ms"],
        rows: content.map(([name, g]) => {
          const c = g.content;
          return [name, count(c.requests), fmt(g.ttft_ms.p50), fmt(c.ttft_text_ms.p50), fmt(c.ttft_text_ms.p95), count(c.thinking_tokens),
            count(c.text_tokens), count(c.tool_use_tokens), count(c.tool_calls), fmt(c.tool_round_trip_ms.p50), fmt(c.tool_round_trip_ms.p95)];
        }),
      });
    }
    if (summary.by_turn && summary.by_turn.length) {
      specs.push({
        key: "turn",
        title: "By conversation turn (cache read share: cache reads over all input tokens)",
        headers: ["Turn", "Requests", "TTFT p50 ms", "TTFT p95 ms", "Cache read share", "Est. cost $"],
        rows: summary.by_turn.map((t) => [count(t.turn), count(t.requests), fmt(t.ttft_ms.p50), fmt(t.ttft_ms.p95), N.percent(t.cache_read_share), N.usd(t.cost_usd)]),
      });
    }
    if (summary.by_dataset && summary.by_dataset.length) {
      specs.push({
        key: "dataset",
        title: "By prompt dataset (over every model x speed; input tokens include cache reads and writes)",
        headers: ["Dataset", "Requests", "OK", "TTFT p50 ms", "TTFT p95 ms", "OTPS p50", "OTPS p10", "E2E p50 ms", "E2E p95 ms",
          "Input tokens", "Output tokens", "Est. cost $"],
        rows: summary.by_dataset.map((d) => [d.dataset, count(d.requests), count(d.ok), fmt(d.ttft_ms.p50), fmt(d.ttft_ms.p95), fmt(d.otps.p50),
          fmt(d.otps.p10), fmt(d.e2e_ms.p50), fmt(d.e2e_ms.p95), count(d.input_tokens + d.cache_read_input_tokens + d.cache_creation_input_tokens),
          count(d.output_tokens), N.usd(d.cost_usd)]),
      });
    }
    const targets = perGroup(summary).filter(([, g]) => g.output_target);
    if (targets.length) {
      specs.push({
        key: "output_target",
        title: "Output-length targets (ratio: output tokens / target, of the requests that completed)",
        headers: ["Model x speed", "Targeted", "Measured", "Ratio p10", "Ratio p50", "Ratio p90", "Within 20%", "At max_tokens"],
        rows: targets.map(([name, g]) => {
          const t = g.output_target;
          return [name, count(t.requests), count(t.measured), fmt(t.ratio.p10), fmt(t.ratio.p50), fmt(t.ratio.p90), N.percent(t.within_20pct), N.percent(t.at_max_tokens)];
        }),
      });
    }
    return specs;
  }

  function renderTables(box, summary) {
    box.replaceChildren();
    for (const spec of breakdownSpecs(summary)) {
      const figure = document.createElement("figure");
      figure.className = "loadkit-breakdown";
      figure.dataset.section = spec.key;
      const caption = document.createElement("figcaption");
      caption.textContent = spec.title;
      const table = document.createElement("table");
      const head = table.createTHead().insertRow();
      for (const h of spec.headers) {
        const th = document.createElement("th");
        th.textContent = h;
        head.appendChild(th);
      }
      const body = table.createTBody();
      for (const row of spec.rows) {
        const tr = body.insertRow();
        for (const cell of row) tr.insertCell().textContent = cell;
      }
      figure.append(caption, table);
      box.appendChild(figure);
    }
  }

  // An axis as wide as its widest tick label needs (a rough 7 px a character at 12 px).
  function axis(scale, side, label) {
    return {
      scale: scale,
      side: side,
      label: label,
      labelSize: label ? 20 : 0,
      size: (u, values) => 24 + 8 * Math.max(3, ...(values || []).map((v) => String(v).length)),
      values: (u, splits) => splits.map(tick),
    };
  }

  function options(spec, width, windowS) {
    const axes = [
      {
        label: "s into the run (" + windowS + " s windows, by intended start)",
        incrs: [1, 2, 3, 4, 5, 6, 10, 12, 20, 30, 60, 120, 300, 600, 1800, 3600].map((n) => n * windowS),
        values: (u, splits) => splits.map(tick),
      },
    ];
    // At least 4 windows wide (uPlot's own range for a single point would be 0..100).
    const xRange = (u) => {
      const t = u.data[0];
      const lo = t.length ? t[0] : 0;
      return [lo, Math.max(t.length ? t[t.length - 1] : lo, lo + 4 * windowS)];
    };
    const scales = { x: { time: false, auto: false, range: xRange } };
    if (spec.twoAxes) {
      axes.push(axis("requests", 3, "requests"), axis("tokens", 1, "tokens"));
      scales.requests = { range: (u, min, max) => [0, Math.max(1, max || 0) * 1.1] };
      scales.tokens = { range: (u, min, max) => [0, Math.max(1, max || 0) * 1.1] };
    } else {
      axes.push(axis("y", 3, ""));
      scales.y = { range: (u, min, max) => [0, Math.max(1, max || 0) * 1.1] };
    }
    return {
      width: width,
      height: 220,
      scales: scales,
      axes: axes,
      series: [{ label: "t s", value: (u, v) => fmt(v) }].concat(spec.lines.map((l) => l.series)),
      legend: { show: true, live: true },
      cursor: { drag: { x: false, y: false } },
    };
  }

  class View {
    constructor() {
      this.charts = new Map(); // key -> {plot, shape, spec}
      this.data = null;
      this.summaryData = null; // the live summary (/loadkit/summary.json): the tables' figures
      this.root = null;
    }

    place() {
      if (!onLlmTab()) return false;
      const table = document.querySelector("main table, table");
      if (this.root && document.body.contains(this.root)) return true;
      if (!table) return false;
      const anchor = table.closest(".MuiTableContainer-root, .MuiPaper-root") || table;
      this.root = document.createElement("section");
      this.root.id = VIEW_ID;
      this.root.innerHTML =
        '<p class="loadkit-status">Waiting for the first time window...</p><div class="loadkit-charts"></div><div class="loadkit-tables"></div>';
      anchor.parentElement.insertBefore(this.root, anchor);
      this.charts.clear();
      if (this.data) this.render(this.data);
      if (this.summaryData) renderTables(this.root.querySelector(".loadkit-tables"), this.summaryData);
      return true;
    }

    async poll() {
      if (!this.place()) return;
      try {
        const response = await fetch("./loadkit/series.json", { cache: "no-store" });
        if (!response.ok) throw new Error("HTTP " + response.status);
        this.data = await response.json();
        this.render(this.data);
      } catch (err) {
        this.status("Charts unavailable: " + err.message);
      }
      try {
        const response = await fetch("./loadkit/summary.json", { cache: "no-store" });
        if (!response.ok) throw new Error("HTTP " + response.status);
        this.summaryData = await response.json();
        renderTables(this.root.querySelector(".loadkit-tables"), this.summaryData);
      } catch (err) {
        this.status("Tables unavailable: " + err.message);
      }
    }

    status(text) {
      const line = this.root && this.root.querySelector(".loadkit-status");
      if (line) line.textContent = text;
    }

    render(data) {
      const box = this.root.querySelector(".loadkit-charts");
      const settle = data.ended ? "the run has ended" : "shown once settled, " + fmt(data.settle_s) + " s behind";
      this.status(
        data.t.length
          ? data.window_s + " s windows by intended start, percentiles from sketches merged across workers (" + settle + ")"
          : "Waiting for the first settled time window (" + settle + ")"
      );
      const specs = chartSpecs(data);
      const keep = new Set(specs.map((s) => s.key));
      for (const [key, chart] of this.charts) {
        if (!keep.has(key)) {
          chart.plot.destroy();
          chart.element.remove();
          this.charts.delete(key);
        }
      }
      // two charts a row: each figure's padding is 16 px, the gap between them 16 px
      const width = Math.max(320, Math.floor(((box.clientWidth || 900) - 56) / 2));
      for (const spec of specs) {
        const values = [data.t].concat(spec.lines.map((l) => l.values));
        const shape = spec.lines.map((l) => l.series.label).join("|") + "@" + width;
        let chart = this.charts.get(spec.key);
        if (chart && chart.shape !== shape) {
          chart.plot.destroy();
          chart.element.remove();
          chart = null;
        }
        if (!chart) {
          const element = document.createElement("figure");
          element.className = "loadkit-chart";
          element.dataset.key = spec.key;
          const caption = document.createElement("figcaption");
          caption.textContent = spec.title;
          element.appendChild(caption);
          box.appendChild(element);
          const plot = new uPlot(options(spec, width, data.window_s), values, element);
          chart = { plot: plot, shape: shape, element: element, spec: spec };
          this.charts.set(spec.key, chart);
        } else {
          chart.plot.setData(values);
        }
        chart.spec = spec;
      }
      // in the order of the specs, whichever were made anew
      const ordered = new Map(specs.map((spec) => [spec.key, this.charts.get(spec.key)]));
      for (const chart of ordered.values()) box.appendChild(chart.element);
      this.charts = ordered;
    }

    // For tests and debugging: each chart's title and, per series, its points with a value.
    summary() {
      return [...this.charts.values()].map((chart) => ({
        title: chart.spec.title,
        series: chart.spec.lines.map((l) => ({
          label: l.series.label,
          points: l.values.filter((v) => v !== null && v !== undefined).length,
        })),
      }));
    }
  }

  // The LLM table's cells (Locust's page renders the table): each column in its format of
  // loadkit/numbers.py, named in the table's structure (webui.py's COLUMNS). Text stays text.
  // Runs before Locust's script reads window.templateArgs (webui.py puts this script first).
  function formatTable() {
    const formats = { count: N.count, number: N.number, percent: N.percent, usd: N.usd };
    const tables = (window.templateArgs && window.templateArgs.extended_tables) || [];
    for (const table of tables.filter((t) => t.key === TAB)) {
      for (const column of table.structure) {
        const format = formats[column.format];
        if (format) column.formatter = (value) => (typeof value === "string" ? value : format(value));
      }
    }
  }

  // The form's field of an option (the form names its fields in camelCase).
  function field(option) {
    const name = option.replace(/_([a-z])/g, (m, c) => c.toUpperCase());
    return document.querySelector('form [name="' + name + '"]');
  }

  // The start form: a heading before the first field of each group of custom parameters.
  function headForm() {
    const groups = (window.templateArgs && window.templateArgs.loadkit_form_groups) || [];
    const firsts = groups.map((g) => ({ title: g.title, field: field(g.fields[0]) })).filter((g) => g.field);
    if (firsts.length < 1) return;
    const all = groups.flatMap((g) => g.fields).map(field).filter(Boolean);
    for (const { title, field } of firsts) {
      let row = field;
      while (row.parentElement && !all.every((f) => row.parentElement.contains(f))) row = row.parentElement;
      const before = row.previousElementSibling;
      if (before && before.classList.contains("loadkit-form-group")) continue;
      const heading = document.createElement("div");
      heading.className = "loadkit-form-group";
      heading.textContent = title;
      row.parentElement.insertBefore(heading, row);
    }
  }

  formatTable();
  const view = new View();
  window.loadkitLlmView = view;
  setInterval(() => {
    headForm();
    if (onLlmTab()) view.place();
  }, 500);
  setInterval(() => view.poll(), POLL_MS);
  view.poll();
})();

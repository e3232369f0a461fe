// loadkit/numbers.py's number(), percent() and usd() in JavaScript, so that the LLM tab shows
// every figure exactly as the HTML report and the printed summary do. Python's f-format rounds
// the exact binary value, ties to even (f"{0.125:.2f}" == "0.12"); toFixed() takes the larger
// magnitude on a tie ("0.13") and toLocaleString() rounds the shortest decimal repr instead.
// Loaded before llm-view.js; its one global is window.loadkitNumbers.
(function () {
  "use strict";

  const MISSING = "-";

  function missing(value) {
    return typeof value !== "number" || !Number.isFinite(value);
  }

  // Python's f"{value:.{digits}f}" (no grouping), for a finite value.
  function fixed(value, digits) {
    const sign = value < 0 || Object.is(value, -0) ? "-" : "";
    const size = Math.abs(value);
    if (size >= 1e21) {
      // toFixed() answers in exponent form there; such doubles are integers, BigInt is exact
      return sign + BigInt(size).toString() + (digits ? "." + "0".repeat(digits) : "");
    }
    let shown = size.toFixed(digits); // the nearest, the larger one on an exact tie
    // The exact decimal expansion of the double (a tie at <= 3 decimals has a short one; no
    // other double comes within 1e-100 of a tie, so 100 digits tell them apart).
    const [whole, fraction] = size.toFixed(100).split(".");
    if (/^50*$/.test(fraction.slice(digits))) {
      const truncated = digits ? whole + "." + fraction.slice(0, digits) : whole;
      if (Number(truncated.slice(-1)) % 2 === 0) shown = truncated; // ties to even
    }
    return sign + shown;
  }

  // Thousands separated, as Python's "," format option.
  function grouped(text) {
    const [, sign, whole, rest] = /^(-?)(\d+)(.*)$/.exec(text);
    return sign + whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",") + rest;
  }

  // number() of a float: at most 3 decimals, fewer as the value grows.
  function number(value) {
    if (missing(value)) return MISSING;
    const size = Math.abs(value);
    if (size === 0) return "0";
    if (size >= 100) return grouped(fixed(value, 0));
    if (size >= 10) return grouped(fixed(value, 1));
    if (size >= 1) return fixed(value, 2);
    if (size < 0.001) return value > 0 ? "<0.001" : ">-0.001";
    return fixed(value, 3);
  }

  // number() of an int (JSON does not tell 12 from 12.0: the caller knows a count).
  function count(value) {
    if (missing(value)) return MISSING;
    if (!Number.isInteger(value)) return number(value);
    return grouped(BigInt(value).toString());
  }

  function percent(share) {
    return missing(share) ? MISSING : fixed(share * 100, 1) + "%";
  }

  function usd(value) {
    if (missing(value)) return MISSING;
    if (Math.abs(value) >= 1) return "$" + grouped(fixed(value, 2));
    return number(value * 100) + "¢";
  }

  window.loadkitNumbers = Object.freeze({ number: number, count: count, percent: percent, usd: usd });
})();

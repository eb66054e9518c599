"""Accessibility checks run in the browser on the rendered page (computed styles, real layout).

Not a full WCAG audit: the checks that a template or stylesheet change most easily breaks.
``problems(browser)`` returns one line per problem; an empty list means the page passed.
"""

CHECKS = r"""
var problems = [];
function visible(e) {
  var r = e.getBoundingClientRect(), s = getComputedStyle(e);
  return r.width > 1 && r.height > 1 && s.visibility !== "hidden" && s.display !== "none";
}
function nameOf(e) {
  var by = e.getAttribute("aria-labelledby");
  if (by) { return by.split(/\s+/).map(function (id) { var t = document.getElementById(id); return t ? t.textContent : ""; }).join(" ").trim(); }
  return (e.getAttribute("aria-label") || e.textContent || e.value || e.getAttribute("title") || "").trim();
}
function describe(e) { return e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") + " \"" + nameOf(e).slice(0, 40) + "\""; }

// The page: language, title, one h1, one main, headings that do not skip levels.
if (!document.documentElement.lang) { problems.push("no lang on <html>"); }
if (!document.title.trim()) { problems.push("empty <title>"); }
if (document.querySelectorAll("h1").length !== 1) { problems.push(document.querySelectorAll("h1").length + " <h1> elements"); }
if (document.querySelectorAll("main").length !== 1) { problems.push("not exactly one <main>"); }
var level = 0;
document.querySelectorAll("h1, h2, h3, h4, h5, h6").forEach(function (h) {
  var l = Number(h.tagName[1]);
  if (level && l > level + 1) { problems.push("heading jumps from h" + level + " to h" + l + ": " + h.textContent.trim()); }
  level = l;
});

// Every field has a label, every control a name, every reference a target, every id is unique.
document.querySelectorAll("input:not([type=hidden]), select, textarea").forEach(function (f) {
  if (!(f.labels && f.labels.length) && !f.getAttribute("aria-label") && !f.getAttribute("aria-labelledby")) {
    problems.push("field without a label: " + describe(f));
  }
});
document.querySelectorAll("a[href], button, summary, [tabindex]").forEach(function (e) {
  if (visible(e) && !nameOf(e) && e.id !== "main") { problems.push("control without a name: " + e.outerHTML.slice(0, 80)); }
  if (Number(e.getAttribute("tabindex")) > 0) { problems.push("positive tabindex changes the focus order: " + describe(e)); }
});
var ids = {};
document.querySelectorAll("[id]").forEach(function (e) {
  if (ids[e.id]) { problems.push("duplicate id " + e.id); }
  ids[e.id] = true;
});
document.querySelectorAll("[aria-describedby], [aria-labelledby]").forEach(function (e) {
  ((e.getAttribute("aria-describedby") || "") + " " + (e.getAttribute("aria-labelledby") || "")).trim().split(/\s+/)
    .forEach(function (id) { if (!document.getElementById(id)) { problems.push("aria reference to a missing id " + id); } });
});
document.querySelectorAll("img").forEach(function (e) { if (!e.hasAttribute("alt")) { problems.push("img without alt"); } });

// Targets big enough to hit (WCAG 2.2 AA 2.5.8: 24 by 24 CSS pixels), and nothing wider than the window.
document.querySelectorAll("button, summary, .button, nav a, input:not([type=hidden]), select, textarea").forEach(function (e) {
  if (!visible(e)) { return; }
  var r = e.getBoundingClientRect();
  if (r.width < 24 || r.height < 24) { problems.push("target smaller than 24px: " + describe(e) + " " + Math.round(r.width) + "x" + Math.round(r.height)); }
});
document.querySelectorAll("body *").forEach(function (e) {
  var s = getComputedStyle(e);
  if (["auto", "scroll", "hidden"].indexOf(s.overflowX) >= 0 && e.scrollWidth > e.clientWidth + 1 && !e.closest(".visually-hidden")
      && !(s.textOverflow === "ellipsis")) {
    problems.push("content cut off or scrolling sideways inside " + describe(e) + ": " + e.scrollWidth + "px in " + e.clientWidth + "px");
  }
});
if (document.documentElement.scrollWidth > window.innerWidth + 1) {
  problems.push("the page scrolls sideways: " + document.documentElement.scrollWidth + "px in a " + window.innerWidth + "px window");
}

// Text contrast (WCAG 2.2 AA 1.4.3): 4.5:1, or 3:1 for large text, against the composited background.
function rgba(text) {
  var m = /rgba?\(([^)]+)\)/.exec(text);
  if (!m) { return null; }
  var p = m[1].split(/[\s,\/]+/).filter(Boolean).map(Number);
  return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
}
function over(top, bottom) {
  var a = top.a + bottom.a * (1 - top.a);
  function mix(k) { return (top[k] * top.a + bottom[k] * bottom.a * (1 - top.a)) / a; }
  return { r: mix("r"), g: mix("g"), b: mix("b"), a: a };
}
function backgroundOf(e) {
  var layers = [];
  for (var n = e; n && n.nodeType === 1; n = n.parentElement) {
    var c = rgba(getComputedStyle(n).backgroundColor);
    if (c && c.a > 0) { layers.push(c); if (c.a >= 1) { break; } }
  }
  var bg = { r: 255, g: 255, b: 255, a: 1 };
  for (var i = layers.length - 1; i >= 0; i--) { bg = over(layers[i], bg); }
  return bg;
}
function luminance(c) {
  var v = [c.r, c.g, c.b].map(function (x) { x /= 255; return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); });
  return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2];
}
var worst = 21;
document.querySelectorAll("body *").forEach(function (e) {
  var own = Array.prototype.some.call(e.childNodes, function (n) { return n.nodeType === 3 && n.textContent.trim(); });
  if (!own || !visible(e) || e.closest(".visually-hidden, [disabled]")) { return; }
  var s = getComputedStyle(e), bg = backgroundOf(e), fg = over(rgba(s.color), bg);
  var a = luminance(fg), b = luminance(bg), ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  var size = parseFloat(s.fontSize), large = size >= 24 || (size >= 18.66 && Number(s.fontWeight) >= 700);
  worst = Math.min(worst, ratio);
  if (ratio < (large ? 3 : 4.5)) {
    problems.push("contrast " + ratio.toFixed(2) + ":1 for " + describe(e) + " (" + s.color + " on " + JSON.stringify(bg) + ")");
  }
});
return problems;
"""

# After one real Tab (so the browser is in keyboard mode), focus every focusable element in turn
# and check that the focus shows: an outline at least 2px wide, or a changed box shadow.
FOCUS_CHECK = r"""
var problems = [];
var focusable = document.querySelectorAll("a[href], button:not([disabled]), summary, input:not([type=hidden]), select, textarea");
focusable.forEach(function (e) {
  var r = e.getBoundingClientRect();
  if (r.width < 1 || r.height < 1 || e.closest("[hidden]")) { return; }
  e.focus();
  if (document.activeElement !== e) { return; }
  var s = getComputedStyle(e);
  var outlined = s.outlineStyle !== "none" && parseFloat(s.outlineWidth) >= 2;
  if (!outlined && s.boxShadow === "none") {
    problems.push("no visible focus on " + e.tagName.toLowerCase() + " \"" + (e.textContent || e.name || "").trim().slice(0, 40) + "\"");
  }
});
document.activeElement.blur();
return problems;
"""


def problems(browser, *, focus: bool = True) -> list[str]:
    found = list(browser.driver.execute_script(CHECKS))
    if focus:
        browser.driver.execute_script("window.scrollTo(0, 0)")
        browser.press("tab")
        found += browser.driver.execute_script(FOCUS_CHECK)
        browser.driver.execute_script("window.scrollTo(0, 0)")
    return found

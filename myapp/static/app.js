// Small progressive enhancements for every page; everything works without them.
(function () {
  "use strict";
  // A message such as "Your post was published." arrives as ?notice=...: once shown, take it out
  // of the address bar, so reloading or coming back to the page does not show it again.
  if (window.history && window.history.replaceState && window.URLSearchParams) {
    var url = new URL(window.location.href);
    if (url.searchParams.has("notice")) {
      url.searchParams.delete("notice");
      window.history.replaceState(window.history.state, "", url.pathname + url.search + url.hash);
    }
  }
  // The delete confirmation is a <details>: Escape closes it and gives focus back to its button.
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") { return; }
    var open = document.querySelector("details.confirm[open]");
    if (open) {
      open.open = false;
      open.querySelector("summary").focus();
    }
  });
})();

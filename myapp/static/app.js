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
  // A form marked data-submit-once is sent once: a double click does not send it twice (the
  // server also makes a second "Publish" of the same form land on the first post). If its
  // navigation is abandoned (the browser's Stop, Escape, another navigation replacing it), the page
  // stays and the form may be sent again: Chromium tells the page through the Navigation API
  // (navigateerror, as the navigation's signal aborts); a browser without that API gets the form
  // back after SUBMIT_ONCE_FALLBACK_MS instead, far longer than any double click. Coming back to
  // the page from the browser's history (pageshow, persisted) gives it back too.
  var SUBMIT_ONCE_FALLBACK_MS = 10000;
  var disableButtons = function (form, disabled) {
    Array.prototype.forEach.call(form.querySelectorAll("button[type=submit]"), function (b) { b.disabled = disabled; });
  };
  var releaseForm = function (form) {
    form.removeAttribute("data-sending");
    form.removeAttribute("aria-busy");
    disableButtons(form, false);
  };
  var releaseForms = function () {
    Array.prototype.forEach.call(document.querySelectorAll("form[data-sending]"), releaseForm);
  };
  var sends = 0;  // each sending is numbered: a timer of an earlier one never touches a later one
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute || !form.hasAttribute("data-submit-once")) { return; }
    if (form.hasAttribute("data-sending")) { event.preventDefault(); return; }
    var sending = String(++sends);
    var still = function () { return form.getAttribute("data-sending") === sending; };
    form.setAttribute("data-sending", sending);
    form.setAttribute("aria-busy", "true");
    window.setTimeout(function () {
      if (still()) { disableButtons(form, true); }
    }, 0);
    if (!window.navigation) {
      window.setTimeout(function () { if (still()) { releaseForm(form); } }, SUBMIT_ONCE_FALLBACK_MS);
    }
  });
  if (window.navigation && window.navigation.addEventListener) {
    // navigateerror also fires when another navigation supersedes the form's in the Navigation API:
    // a same-document one (a "#main" link, history.replaceState) does so while Chromium goes on
    // sending the form, whose answer then replaces the page. The new navigation's navigate event
    // follows the error in the same task: only an error with none after it (Stop, Escape,
    // window.stop()) gives the forms back.
    var navigations = 0;
    window.navigation.addEventListener("navigate", function () { navigations += 1; });
    window.navigation.addEventListener("navigateerror", function () {
      var seen = navigations;
      window.setTimeout(function () { if (navigations === seen) { releaseForms(); } }, 0);
    });
  }
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) { releaseForms(); }
  });

  // Back (or Forward) may bring a page back whole from the browser's memory: Chromium keeps even
  // no-store pages there while no cookie changes, so a session ended elsewhere (another device,
  // the provider, an administrator, its time limit) would still show as signed in, with its data.
  // Such a page stays hidden until the server says it belongs to this browser's session (the
  // same CSRF token; none when signed out). A signed-in page whose session is gone gives way to
  // the signed-out page (the check has cleared the cookie, and left the reason for that page:
  // SessionCookie.ended_note); any other stale page is loaded again (by GET: a page that
  // answered a form is not sent again). A check that cannot be made (offline, the server failing
  // or not answering within 3 s) loads the page again too, rather than show it: whoever is at a
  // device signed out from another one could otherwise see its pages by taking it offline and
  // pressing Back. An answer or a time limit of an earlier check never decides a later one.
  //
  // The same check runs in every other tab of this site when one of them lands signed out
  // (data-session-gone: the landing page after Sign out, the signed-out page), told through a
  // BroadcastChannel: a tab left open on a signed-in page would otherwise go on showing it, and
  // the person's next click there would go straight to the provider's sign-in form (the browser
  // has no cookie left: to the server, a stranger). The message carries no secret: the reason the
  // landing tab was given (a key such as "logout"), which the signed-out page turns into words.
  var root = document.documentElement;
  var sessionUrl = document.body && document.body.getAttribute("data-session-url");
  var CHANNEL = "myapp-session";
  // A reason as the signed-out page knows them (a key such as "logout"); anything else is none.
  var reasonKey = function (said) { return /^[a-z_]{1,40}$/.test(said) ? said : ""; };
  if (sessionUrl && window.fetch) {
    var checks = 0;
    var check = function (reason) {
      var mine = ++checks;
      root.classList.add("is-rechecking");
      var field = document.querySelector("header form input[name=csrf_token]");
      var shown = field ? field.value : "";
      var decide = function (current) {
        if (mine !== checks) { return; }
        checks += 1;  // decided: a later answer (or the time limit) changes nothing
        var signedOutUrl = document.body.getAttribute("data-signed-out-url");
        if (current === shown) {
          root.classList.remove("is-rechecking");
        } else if (shown && current === "" && signedOutUrl) {
          window.location.replace(signedOutUrl + (reason ? "&reason=" + encodeURIComponent(reason) : ""));
        } else {
          // Without its #fragment: the same address with one is a jump within the page, no load.
          window.location.replace(window.location.href.split("#")[0]);
        }
      };
      window.setTimeout(function () { decide(undefined); }, 3000);
      fetch(sessionUrl, { credentials: "same-origin", cache: "no-store", headers: { "X-CSRF": "1" } })
        .then(function (response) {
          if (response.status === 401) {
            // Signed out; any other refusal (a step-up rule) is for the page itself to explain.
            return response.json().then(function (body) { return body.error === "login_required" ? "" : undefined; },
              function () { return undefined; });
          }
          if (!response.ok) { return undefined; }
          return response.json().then(function (user) {
            return user && typeof user.csrf_token === "string" ? user.csrf_token : undefined;
          });
        })
        .then(decide, function () { decide(undefined); });
    };
    window.addEventListener("pagehide", function (event) {
      checks += 1;
      if (event.persisted) { root.classList.add("is-rechecking"); }
    });
    window.addEventListener("pageshow", function (event) {
      if (event.persisted) { check(""); }
    });
    if (window.BroadcastChannel) {
      var gone = document.body.getAttribute("data-session-gone");
      if (gone !== null) {
        var channel = new BroadcastChannel(CHANNEL);
        channel.postMessage({ signedOut: reasonKey(gone) });
        channel.close();
      } else if (document.body.getAttribute("data-signed-out-url")) {
        new BroadcastChannel(CHANNEL).onmessage = function (event) {
          var said = event.data && event.data.signedOut;
          if (typeof said === "string") { check(reasonKey(said)); }
        };
      }
    }
  }

  // Drafts: what is typed into a form marked data-draft is kept in this tab's sessionStorage (the
  // text only, never anything secret), so that a session that ends mid-edit loses nothing: after
  // signing in again the form is filled in as it was. A draft names the version it was typed
  // over (data-draft-version: empty for a new post, when the post was last saved for an edit)
  // and comes back only onto that version, never over a post changed since, nor onto a form the
  // server sent back with the typed text and its errors. Publishing or saving clears it (the next
  // page names it in data-draft-done), and so does the form's Cancel. A draft is its writer's
  // (data-draft-owner): the next person to sign in in this tab, on a shared computer, is never
  // given it (and it is thrown away when they meet it), and Sign out (data-drafts-end) clears
  // every draft of the tab.
  var DRAFT = "myapp-draft:";
  function storage() {
    try { return window.sessionStorage; } catch (e) { return null; }
  }
  var store = storage();
  if (store) {
    Array.prototype.forEach.call(document.querySelectorAll("[data-draft-done]"), function (el) {
      store.removeItem(DRAFT + el.getAttribute("data-draft-done"));
    });
    document.addEventListener("submit", function (event) {
      if (!event.target.hasAttribute || !event.target.hasAttribute("data-drafts-end")) { return; }
      for (var i = store.length - 1; i >= 0; i--) {
        var name = store.key(i);
        if (name && name.indexOf(DRAFT) === 0) { store.removeItem(name); }
      }
    });
    Array.prototype.forEach.call(document.querySelectorAll("form[data-draft]"), function (form) {
      var key = DRAFT + form.getAttribute("data-draft");
      var version = form.getAttribute("data-draft-version") || "";
      var owner = form.getAttribute("data-draft-owner") || "";
      var fields = form.querySelectorAll("input[type=text], textarea");
      var typed = function () {
        var all = {};
        Array.prototype.forEach.call(fields, function (f) { all[f.name] = f.value; });
        return all;
      };
      var saved = null;
      try { saved = JSON.parse(store.getItem(key) || "null"); } catch (e) { saved = null; }
      if (saved && typeof saved === "object" && (!owner || saved.owner !== owner)) {
        // Someone else's (or kept before drafts named their writer: whose is unknown).
        store.removeItem(key);
        saved = null;
      }
      if (saved && typeof saved === "object" && !form.querySelector(".form-errors")) {
        var text = saved.typed && typeof saved.typed === "object" ? saved.typed : {};
        var differs = Array.prototype.some.call(fields, function (f) {
          return typeof text[f.name] === "string" && text[f.name] !== f.value;
        });
        if ((saved.version || "") === version && differs) {
          Array.prototype.forEach.call(fields, function (f) {
            if (typeof text[f.name] === "string") { f.value = text[f.name]; }
          });
          var note = form.querySelector("[data-draft-restored]");
          if (note) { note.hidden = false; }
        }
      }
      form.addEventListener("input", function () {
        try { store.setItem(key, JSON.stringify({ owner: owner, version: version, typed: typed() })); } catch (e) { /* full or disabled: nothing kept */ }
      });
      Array.prototype.forEach.call(form.querySelectorAll("[data-draft-discard]"), function (cancel) {
        cancel.addEventListener("click", function () { store.removeItem(key); });
      });
    });
  }

  // Times are written in UTC (<time datetime="...Z">); shown here in the reader's own time zone,
  // the UTC value kept as the tooltip. Without script they stay in UTC, and say so.
  if (window.Intl && Intl.DateTimeFormat) {
    var options = { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", timeZoneName: "short" };
    var short = new Intl.DateTimeFormat(undefined, options);
    var long = new Intl.DateTimeFormat(undefined, Object.assign({ second: "2-digit" }, options));
    Array.prototype.forEach.call(document.querySelectorAll("time[datetime$='Z']"), function (el) {
      var moment = new Date(el.getAttribute("datetime"));
      if (isNaN(moment.getTime())) { return; }
      el.title = el.textContent;
      el.textContent = (el.hasAttribute("data-seconds") ? long : short).format(moment);
      el.setAttribute("data-localised", "");
    });
  }

  // A confirmation's Cancel closes it without leaving the page.
  document.addEventListener("click", function (event) {
    var cancel = event.target.closest && event.target.closest("[data-confirm-cancel]");
    if (!cancel) { return; }
    var details = cancel.closest("details.confirm");
    if (!details) { return; }
    event.preventDefault();
    details.open = false;
    details.querySelector("summary").focus();
  });

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

// The dashboard's notes card: the same data the server rendered, now live from the browser.
// Calls go to this site's /api/..., which adds the Bearer token on the server: no token here.
(function () {
  "use strict";
  if (!window.fetch) { return; }
  Array.prototype.forEach.call(document.querySelectorAll(".notes-card[data-api]"), setUp);

  function setUp(card) {
    var api = card.getAttribute("data-api").replace(/\/$/, "");
    var list = card.querySelector(".notes");
    var empty = card.querySelector("[data-empty]");
    var form = card.querySelector(".note-form");
    var input = form.querySelector("input");
    var button = form.querySelector("button");
    var status = card.querySelector("[data-status]");

    function say(message, isError) {
      status.textContent = message || "";
      status.classList.toggle("is-error", Boolean(isError));
    }

    function signInAgain() {
      status.textContent = "Your session has ended. ";
      var link = document.createElement("a");
      link.href = card.getAttribute("data-login");
      link.textContent = "Sign in again";
      status.appendChild(link);
      status.classList.add("is-error");
      form.hidden = true;
      Array.prototype.forEach.call(list.querySelectorAll("button"), function (b) { b.disabled = true; });
    }

    function isLocalPath(url) {
      return typeof url === "string" && url.charAt(0) === "/" && url.charAt(1) !== "/" && url.charAt(1) !== "\\";
    }

    function call(method, path, body) {
      var options = { method: method, credentials: "same-origin", headers: { "X-CSRF": "1", "Accept": "application/json" } };
      if (body !== undefined) {
        options.headers["Content-Type"] = "application/json";
        options.body = JSON.stringify(body);
      }
      return fetch(api + path, options).then(function (response) {
        if (response.status === 204) { return {}; }
        return response.json().catch(function () { return {}; }).then(function (data) {
          if (response.status === 401 && data.error === "login_required") {
            signInAgain();
            throw new Error("login_required");
          }
          if (response.status === 401 && data.error === "step_up_required" && isLocalPath(data.login_url)) {
            // A stronger or more recent sign-in is needed: the provider asks, then this page comes back.
            window.location.assign(data.login_url);
            throw new Error("login_required");
          }
          if (!response.ok) {
            throw new Error(data.message || "The notes service answered " + response.status + ".");
          }
          return data;
        });
      });
    }

    function busy(on) {
      if (on) { card.setAttribute("aria-busy", "true"); } else { card.removeAttribute("aria-busy"); }
    }

    function show(notes) {
      list.textContent = "";
      notes.forEach(function (note) {
        var item = document.createElement("li");
        var text = document.createElement("span");
        text.className = "note-text";
        text.textContent = note.text;
        item.appendChild(text);
        if (note.id !== undefined) {
          var remove = document.createElement("button");
          remove.type = "button";
          remove.className = "note-delete";
          remove.textContent = "Delete";
          remove.setAttribute("aria-label", "Delete note: " + note.text);
          remove.addEventListener("click", function () { removeNote(note, remove); });
          item.appendChild(remove);
        }
        list.appendChild(item);
      });
      empty.hidden = notes.length > 0;
    }

    function refresh() {
      busy(true);
      return call("GET", "/notes")
        .then(function (data) { show(data.notes || []); })
        .then(function () { busy(false); }, function (error) { busy(false); throw error; });
    }

    function failed(error) {
      if (error.message !== "login_required") { say(error.message, true); }
    }

    function removeNote(note, control) {
      control.disabled = true;
      say("Deleting…");
      call("DELETE", "/notes/" + encodeURIComponent(note.id))
        .then(refresh)
        .then(function () { say("Note deleted."); input.focus(); })
        .catch(function (error) { control.disabled = false; failed(error); });
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var text = input.value.trim();
      if (!text) { say("Write something first.", true); input.focus(); return; }
      button.disabled = true;
      say("Saving…");
      call("POST", "/notes", { text: text })
        .then(function () { input.value = ""; return refresh(); })
        .then(function () { say("Note added."); })
        .catch(failed)
        .then(function () { button.disabled = false; input.focus(); });
    });

    form.hidden = false;
    Array.prototype.forEach.call(card.querySelectorAll("[data-needs-script]"), function (el) { el.hidden = false; });
    refresh().catch(failed);
  }
})();

// The operator page's only script: keep the view fresh, and send the two
// operator actions after a confirmation. Pages are rendered by the server;
// this script never builds markup from data, it swaps in the server's.
(function () {
  "use strict";

  var live = document.getElementById("live");
  var flash = document.getElementById("flash");
  var actionHeader = document.body.getAttribute("data-action-header");
  var intervalMs = Number(document.body.getAttribute("data-poll-interval-ms")) || 3000;
  var lastAnswer = null;
  var timer = null;

  function say(text, isError) {
    flash.textContent = text;
    flash.className = isError ? "flash error" : "flash";
    flash.hidden = !text;
  }

  // A 401 means the token changed or the session ended: reloading shows the
  // sign-in form, which does not poll, so this cannot loop.
  function signedOut(response) {
    if (response.status === 401) {
      window.location.reload();
      return true;
    }
    return false;
  }

  // Fetch this view again and swap its live region, keeping open <details>.
  function refreshView() {
    return fetch(window.location.pathname, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "text/html" },
    }).then(function (response) {
      if (signedOut(response) || !response.ok) return;
      return response.text().then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        var region = fresh.getElementById("live");
        if (!region) return;
        var open = [];
        live.querySelectorAll("details[id][open]").forEach(function (d) { open.push(d.id); });
        live.innerHTML = region.innerHTML;
        open.forEach(function (id) {
          var d = document.getElementById(id);
          if (d) d.open = true;
        });
        document.title = fresh.title;
      });
    });
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(poll, intervalMs);
  }

  // Poll the view's small JSON; a different answer means the page is stale.
  function poll() {
    var url = live.getAttribute("data-poll");
    if (!url || document.hidden) return schedule();
    fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (signedOut(response) || !response.ok) return null;
        return response.text();
      })
      .then(function (answer) {
        if (answer === null) return;
        var changed = lastAnswer !== null && answer !== lastAnswer;
        lastAnswer = answer;
        if (changed) return refreshView();
      })
      .catch(function () { /* the server is away; the next tick tries again */ })
      .then(schedule);
  }

  var questions = {
    requeue: "Requeue %s? It goes back to the queue with its attempts reset.",
    cancel: "Cancel %s? It fails with CANCELLED and a worker running it stops.",
  };

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-action]");
    if (!button) return;
    var action = button.getAttribute("data-action");
    var id = button.getAttribute("data-artifact-id");
    var label = button.getAttribute("data-label") || id;
    if (!questions[action] || !window.confirm(questions[action].replace("%s", label))) return;

    button.disabled = true;
    var headers = { Accept: "application/json" };
    headers[actionHeader] = "1";
    fetch("/ui/api/artifacts/" + encodeURIComponent(id) + "/" + action, {
      method: "POST",
      credentials: "same-origin",
      headers: headers,
    })
      .then(function (response) {
        if (signedOut(response)) return;
        return response.json().then(function (body) {
          if (response.ok) {
            say(action === "requeue" ? "Requeued " + label + "." : "Cancelled " + label + ".", false);
          } else {
            var reason = body.reason || (body.error && body.error.message) || response.statusText;
            say("Could not " + action + " " + label + ": " + reason, true);
          }
          return refreshView();
        });
      })
      .catch(function (error) { say("Could not " + action + ": " + error, true); })
      .then(function () { button.disabled = false; });
  });

  // Coming back with the back button may show a page from the browser's
  // cache: look again at once.
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) refreshView();
  });
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) poll();
  });

  if (live && live.getAttribute("data-poll")) poll();
})();

// Live updates for board and item pages: on a change, fetch this page again and swap
// in its [data-live] regions (never one the member is typing in). Without
// EventSource (or JavaScript) the pages work as before, by reloading.
(function () {
  "use strict";
  if (!window.EventSource || !window.fetch || !window.DOMParser) return;
  var board = location.pathname.match(/^\/b\/[0-9a-f]{64}(?=$|\/i\/[0-9a-f]{32}$)/);
  if (!board) return;
  var source = null, delay = 1000, busy = false, again = false, opened = false;

  function typing(region) {
    if (region.contains(document.activeElement) && document.activeElement !== document.body) {
      return true;
    }
    var fields = region.querySelectorAll("input, textarea, select");
    for (var i = 0; i < fields.length; i++) {
      var f = fields[i];
      if (f.tagName === "SELECT") continue;
      if (f.type === "radio" || f.type === "checkbox") {
        if (f.checked !== f.defaultChecked) return true;
      } else if (f.value !== f.defaultValue) return true;
    }
    return false;
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        var regions = document.querySelectorAll("[data-live]");
        for (var i = 0; i < regions.length; i++) {
          var old = regions[i], next = fresh.getElementById(old.id);
          if (next && !typing(old)) old.replaceWith(document.adoptNode(next));
        }
      })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  function connect() {
    source = new EventSource(board[0] + "/live");
    source.onopen = function () {
      delay = 1000;
      if (opened) refresh(); // changes may have come while it was down
      opened = true;
    };
    source.addEventListener("change", refresh);
    source.addEventListener("lost", refresh);
    source.addEventListener("end", function () { source.close(); });
    source.onerror = function () {
      if (source.readyState !== EventSource.CLOSED) return; // the browser retries
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 60000);
    };
  }

  connect();
})();

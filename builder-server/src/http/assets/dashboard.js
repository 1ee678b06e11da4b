// Live updates: the pages work without this script; with it, the
// dashboard refreshes its sections on every farm event and a build page
// follows its console. Text is only ever inserted as text.
(function () {
  "use strict";
  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-started]").forEach(function (el) {
      var s = Math.max(0, Math.floor((now - Date.parse(el.getAttribute("data-started"))) / 1000));
      el.textContent = Math.floor(s / 60) + "m " + ("0" + (s % 60)).slice(-2) + "s";
    });
  }
  setInterval(tick, 1000);
  tick();
  var main = document.getElementById("dashboard");
  if (main) {
    var pending = false;
    var refresh = function () {
      if (pending) return;
      pending = true;
      setTimeout(function () {
        fetch(location.pathname, { headers: { Accept: "text/html" } })
          .then(function (r) { return r.text(); })
          .then(function (html) {
            var doc = new DOMParser().parseFromString(html, "text/html");
            var fresh = doc.getElementById("dashboard");
            if (fresh) main.replaceChildren.apply(main, Array.from(fresh.childNodes));
            tick();
          })
          .finally(function () { pending = false; });
      }, 200);
    };
    var events = new EventSource("/api/v1/events");
    ["build_queued", "build_started", "build_finished", "worker_connected",
     "worker_disconnected", "job_changed", "lagged"].forEach(function (name) {
      events.addEventListener(name, refresh);
    });
  }
  var consoleEl = document.getElementById("console");
  if (consoleEl && consoleEl.getAttribute("data-uuid")) {
    consoleEl.textContent = "";
    var state = document.getElementById("state");
    var src = new EventSource("/api/v1/builds/" + consoleEl.getAttribute("data-uuid") + "/console");
    src.addEventListener("line", function (e) {
      consoleEl.appendChild(document.createTextNode(e.data + "\n"));
    });
    src.addEventListener("finished", function (e) {
      var end = JSON.parse(e.data);
      if (state) {
        state.textContent = end.result;
        state.className = end.outcome.kind === "exited" && end.outcome.code === 0 ? "ok" : "fail";
      }
      src.close();
    });
    src.addEventListener("error", function () {
      if (src.readyState === EventSource.CLOSED && state) state.textContent += " (stream closed)";
    });
  }
})();

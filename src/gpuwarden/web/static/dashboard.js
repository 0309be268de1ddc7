// gpuwarden's dashboard: ages and uptimes that tick in the browser, toasts for what an action did,
// the model details behind a model's ⚡ GPU button, and "Load on selected" only with a GPU ticked.
// Text from the server (process names, errors) is only ever set as textContent, never as HTML.
(function () {
  "use strict";
  var offsetMs = 0; // the server's clock minus this browser's, from the last fragment

  function label(seconds) { // as gpuwarden.present.duration_label
    seconds = Math.max(0, Math.floor(seconds));
    var hours = Math.floor(seconds / 3600), minutes = Math.floor((seconds % 3600) / 60), secs = seconds % 60;
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    if (hours) { return hours + "h " + pad(minutes) + "m"; }
    if (minutes) { return minutes + "m " + pad(secs) + "s"; }
    return secs + "s";
  }

  // The server's time comes with each fragment (X-Gpuwarden-Time: a fragment may have been rendered
  // a while before it was served to this browser); the page itself carries its render time.
  function syncClock(xhr) {
    var serverNow = xhr && Number(xhr.getResponseHeader("X-Gpuwarden-Time"));
    if (serverNow) { offsetMs = serverNow - Date.now(); return; }
    var root = document.getElementById("dashboard-content");
    var renderedAt = root && Date.parse(root.getAttribute("data-rendered-at") || "");
    if (renderedAt) { offsetMs = renderedAt - Date.now(); }
  }

  function tick() {
    var now = Date.now() + offsetMs;
    document.querySelectorAll("[data-since]").forEach(function (element) {
      var since = Date.parse(element.getAttribute("data-since"));
      if (since) { element.textContent = label((now - since) / 1000); }
    });
  }

  function toast(detail) {
    var box = document.getElementById("toasts");
    if (!box || !detail || !detail.message) { return; }
    var item = document.createElement("div");
    item.className = "toast " + (detail.ok ? "toast-ok" : "toast-error");
    item.setAttribute("role", detail.ok ? "status" : "alert");
    item.textContent = detail.message;
    box.appendChild(item);
    setTimeout(function () { item.classList.add("toast-leaving"); }, 6000);
    setTimeout(function () { item.remove(); }, 6600);
  }

  function syncMultiSelect(form) {
    var button = form.querySelector(".load-selected");
    if (button) { button.disabled = !form.querySelector("input[name=gpus]:checked"); }
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("button[data-details]");
    if (!button) { return; }
    var details = document.getElementById(button.getAttribute("data-details"));
    if (details) { details.open = !details.open; if (details.open) { details.scrollIntoView({block: "nearest"}); } }
  });
  document.addEventListener("change", function (event) {
    var form = event.target.closest && event.target.closest("form.multi");
    if (form) { syncMultiSelect(form); }
  });
  // A pushed refresh swaps the whole content: what a person was doing there (GPUs ticked, details
  // open) is carried over, so a GPU reading never undoes a half-made choice.
  var kept = null;
  function remember() {
    return {
      ticked: Array.prototype.map.call(document.querySelectorAll("form.multi input[name=gpus]:checked"),
        function (box) { return box.closest("[data-model]").getAttribute("data-model") + "\n" + box.value; }),
      open: Array.prototype.map.call(document.querySelectorAll("details.model-details[open]"),
        function (details) { return details.id; })
    };
  }
  function restore(state) {
    document.querySelectorAll("form.multi input[name=gpus]").forEach(function (box) {
      var key = box.closest("[data-model]").getAttribute("data-model") + "\n" + box.value;
      if (!box.disabled && state.ticked.indexOf(key) >= 0) { box.checked = true; }
    });
    state.open.forEach(function (id) {
      var details = document.getElementById(id);
      if (details) { details.open = true; }
    });
  }
  document.body.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    kept = target && target.id === "dashboard-content" && event.detail.requestConfig &&
      event.detail.requestConfig.verb === "get" ? remember() : null;
  });
  document.body.addEventListener("gw-toast", function (event) { toast(event.detail); });
  document.body.addEventListener("htmx:afterSettle", function (event) {
    if (kept) { restore(kept); kept = null; }
    syncClock(event.detail && event.detail.xhr);
    tick();
    document.querySelectorAll("form.multi").forEach(syncMultiSelect);
  });
  document.body.addEventListener("htmx:responseError", function (event) {
    toast({ok: false, message: "The server answered " + event.detail.xhr.status + ": " +
           (event.detail.xhr.statusText || "request failed")});
  });
  document.body.addEventListener("htmx:sendError", function () {
    toast({ok: false, message: "gpuwarden cannot be reached: is the server running?"});
  });
  // Server-sent events: "update" when a model or a GPU changed. The open dashboards fetch the new
  // content once (rendered once on the server, whoever asks), spread over a short jitter,
  // and never over an answer still on its way (an action's refusal would be swapped away).
  // A hidden tab lets its stream go (browsers give a site six connections: six open tabs must not
  // starve the seventh) and catches up when shown; a stream that failed (gpuwarden restarting, a
  // proxy's 502) is opened again, and the content fetched once, since changes may have been missed.
  var live = document.getElementById("live-updates");
  var pending = null, source = null, retry = null;
  function refresh() {
    if (pending) { return; }
    pending = setTimeout(function () {
      pending = null;
      if (document.querySelector(".htmx-request")) { refresh(); return; }
      if (document.getElementById("dashboard-content")) {
        htmx.ajax("GET", "/dashboard/refresh?probe=false", {target: "#dashboard-content", swap: "outerHTML"});
      }
    }, Math.random() * 100);
  }
  function disconnect() {
    if (source) { source.close(); source = null; }
    if (retry) { clearTimeout(retry); retry = null; }
  }
  function connect(catchUp) {
    disconnect();
    if (!document.getElementById("live-updates")) { return; } // live updates turned off
    source = new EventSource(live.getAttribute("data-events"));
    var failed = false;
    source.addEventListener("open", function () { if (catchUp || failed) { refresh(); } catchUp = false; });
    source.addEventListener("update", function () {
      if (!document.getElementById("live-updates")) { disconnect(); return; }
      refresh();
    });
    source.addEventListener("error", function () {
      failed = true;
      if (source && source.readyState === EventSource.CLOSED) { // given up (an HTTP error): try again
        retry = setTimeout(function () { connect(true); }, 5000);
      }
    });
  }
  if (live && window.EventSource && window.htmx) {
    connect(false);
    document.addEventListener("visibilitychange", function () {
      if (document.hidden) { disconnect(); } else { connect(true); }
    });
  }
  syncClock();
  tick();
  document.querySelectorAll("form.multi").forEach(syncMultiSelect);
  setInterval(tick, 1000);
})();

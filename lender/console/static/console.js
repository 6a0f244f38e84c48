// The console's own script: ages that keep counting between live updates. Everything else is HTMX.
(function () {
  function age(seconds) {
    if (seconds < 90) return Math.round(seconds) + " s";
    if (seconds < 5400) return Math.round(seconds / 60) + " min";
    if (seconds < 172800) return (seconds / 3600).toFixed(1) + " h";
    return Math.round(seconds / 86400) + " d";
  }
  function tick() {
    var now = Date.now() / 1000;
    document.querySelectorAll("[data-seen-at]").forEach(function (el) {
      var at = parseFloat(el.getAttribute("data-seen-at"));
      if (!isNaN(at)) el.textContent = age(Math.max(0, now - at));
      var stale = parseFloat(el.getAttribute("data-stale-after"));
      var row = el.closest("[data-row]");
      if (row && !isNaN(stale) && now - at > stale) row.classList.add("stale");
    });
  }
  setInterval(tick, 5000);
  document.addEventListener("htmx:afterSwap", tick);
})();

// tideflow dashboard: refresh each page's live part every two seconds (no build step, no
// framework): ask for the same URL with X-Tideflow-Partial and put the answer in place.
(function () {
  const live = document.querySelector("[data-live]");
  if (!live) return;
  const every = Number(live.dataset.live) || 2000;
  let busy = false;
  setInterval(async function () {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const answer = await fetch(window.location.href, {
        headers: { "X-Tideflow-Partial": "1" },
        credentials: "same-origin",
      });
      if (answer.ok) live.innerHTML = await answer.text();
    } catch (e) {
      // the dashboard restarted or the network blinked: try again next time
    } finally {
      busy = false;
    }
  }, every);
})();

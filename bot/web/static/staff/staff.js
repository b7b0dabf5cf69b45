// Staff pages: one live event stream for the whole page, alert badge, and CSRF for fetch().
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="csrf-token"]');
  window.clinicbotCsrf = meta ? meta.content : "";

  var badge = document.getElementById("alert-count");
  var banner = document.getElementById("alert-banner");

  function showAlerts(payload) {
    if (!badge || typeof payload.alerts !== "number") return;
    badge.textContent = payload.alerts > 0 ? String(payload.alerts) : "";
    badge.classList.toggle("hot", payload.alerts > 0);
    if (banner) {
      if (payload.alert_text) {
        banner.textContent = payload.alert_text;
        banner.hidden = false;
      } else {
        banner.hidden = true;
      }
    }
  }

  if (!window.EventSource) return;
  var params = new URLSearchParams();
  var scope = document.body.getAttribute("data-conversation");
  if (scope) params.set("conversation", scope);
  var source = new EventSource("/staff/events" + (params.toString() ? "?" + params : ""));
  source.addEventListener("changed", function (event) {
    var payload = {};
    try { payload = JSON.parse(event.data); } catch (e) { return; }
    showAlerts(payload);
    document.dispatchEvent(new CustomEvent("staff:changed", { detail: payload }));
  });
  source.addEventListener("signed-out", function () {
    source.close();
    window.location.href = "/staff/login?next=" + encodeURIComponent(window.location.pathname);
  });
})();

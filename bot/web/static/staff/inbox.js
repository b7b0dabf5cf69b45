// The inbox and conversation pages: refresh the queue or the transcript when staff.js reports a change,
// announce what is new politely, and insert canned replies into the Reply box.
(function () {
  "use strict";

  function fetchHtml(url) {
    // A refresh nobody asked for (a change event): marked so that it does not keep the session alive.
    var headers = { Accept: "text/html", "X-Live-Refresh": "1" };
    return fetch(url, { credentials: "same-origin", headers: headers }).then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.text();
    });
  }

  function keys(container, attribute) {
    var found = {};
    container.querySelectorAll("[" + attribute + "]").forEach(function (element) {
      found[element.getAttribute(attribute)] = true;
    });
    return found;
  }

  function refresher(url, container, attribute, announce, describe) {
    var lastVersion = null;
    var busy = false;
    var again = false;
    function run() {
      if (busy) { again = true; return; }
      busy = true;
      var before = keys(container, attribute);
      fetchHtml(url()).then(function (html) {
        container.innerHTML = html;
        var added = Object.keys(keys(container, attribute)).filter(function (key) { return !before[key]; });
        if (added.length && announce) announce.textContent = describe(added.length);
      }).catch(function () { /* the next change event retries */ }).then(function () {
        busy = false;
        if (again) { again = false; run(); }
      });
    }
    document.addEventListener("staff:changed", function (event) {
      var version = event.detail && event.detail.version;
      // The first event also refreshes: something may have changed between rendering and connecting.
      if (version === lastVersion) return;
      lastVersion = version;
      run();
    });
  }

  var queue = document.getElementById("queue");
  if (queue) {
    var rows = document.getElementById("queue-rows");
    refresher(function () {
      var params = new URLSearchParams({ view: queue.getAttribute("data-view") || "open", q: queue.getAttribute("data-q") || "" });
      return "/staff/queue?" + params.toString();
    }, rows, "data-id", document.getElementById("queue-announce"), function (count) {
      return count === 1 ? "1 new conversation in the queue" : count + " new conversations in the queue";
    });
  }

  var conversation = document.body.getAttribute("data-conversation");
  var transcript = document.getElementById("transcript");
  if (conversation && transcript) {
    refresher(function () {
      return "/staff/conversations/" + encodeURIComponent(conversation) + "/transcript";
    }, transcript, "data-key", document.getElementById("transcript-announce"), function (count) {
      return count === 1 ? "1 new message in the transcript" : count + " new messages in the transcript";
    });
  }

  var cannedForm = document.getElementById("canned-form");
  var reply = document.getElementById("reply");
  if (cannedForm && reply && conversation) {
    cannedForm.addEventListener("submit", function (event) {
      event.preventDefault();
      var select = cannedForm.querySelector("select");
      var url = "/staff/canned/" + encodeURIComponent(select.value) + "/render?conversation=" + encodeURIComponent(conversation);
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      }).then(function (data) {
        reply.value = reply.value ? reply.value.replace(/\s*$/, "") + "\n" + data.text : data.text;
        reply.focus();
      }).catch(function () {
        cannedForm.submit();  // fall back to the page that prefills the reply
      });
    });
  }
})();

/* The patient web chat: send messages, show replies streamed from the server, verify by code. */
(() => {
  "use strict";

  const $ = (selector) => document.querySelector(selector);
  const texts = JSON.parse($("#chat-texts").textContent);
  const lang = document.documentElement.lang === "es" ? "es" : "en";

  const log = $("#log");
  const composer = $("#composer");
  const input = $("#message");
  const typing = $("#typing");
  const connection = $("#connection");

  // Keys of rendered events, and the bubbles of messages sent from this page by client id.
  const seen = new Set();
  const mine = new Map();
  let typingTimer = 0;
  let lastReplyAt = 0;

  function newClientId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // Text only: links become anchors, everything else stays text (never innerHTML).
  const URL_PATTERN = /https?:\/\/[^\s<>"']+/g;

  function appendText(parent, text) {
    let last = 0;
    for (const match of text.matchAll(URL_PATTERN)) {
      let url = match[0].replace(/[.,;:!?)]+$/, "");
      parent.append(text.slice(last, match.index));
      const link = document.createElement("a");
      link.href = url;
      link.textContent = url;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      parent.append(link);
      last = match.index + url.length;
    }
    parent.append(text.slice(last));
  }

  function scrollToEnd() {
    log.scrollTop = log.scrollHeight;
  }

  function addMessage({ who, text, buttons }) {
    const item = document.createElement("div");
    item.className = `msg msg-${who}`;
    const label = document.createElement("span");
    label.className = "who";
    label.textContent = texts[who === "you" ? "you" : who === "staff" ? "staff" : "assistant"];
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    for (const paragraph of text.split(/\n{2,}/)) {
      const p = document.createElement("p");
      paragraph.split("\n").forEach((line, index) => {
        if (index) p.append(document.createElement("br"));
        appendText(p, line);
      });
      bubble.append(p);
    }
    item.append(label, bubble);
    if (buttons && buttons.length) {
      const group = document.createElement("div");
      group.className = "suggestions";
      group.setAttribute("role", "group");
      group.setAttribute("aria-label", texts.suggestions);
      for (const { title } of buttons) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "suggestion";
        button.textContent = title;
        button.addEventListener("click", () => {
          group.querySelectorAll("button").forEach((b) => { b.disabled = true; });
          send(title);
          input.focus();
        });
        group.append(button);
      }
      item.append(group);
    }
    log.append(item);
    scrollToEnd();
    return item;
  }

  function showTyping(on) {
    clearTimeout(typingTimer);
    typing.hidden = !on;
    if (on) {
      scrollToEnd();
      // A hand-off to staff may bring no immediate reply: stop suggesting one is coming.
      typingTimer = setTimeout(() => { typing.hidden = true; }, 15000);
    }
  }

  function setNote(item, text, retry) {
    let note = item.querySelector(".msg-note");
    if (!note) {
      note = document.createElement("p");
      note.className = "msg-note";
      item.append(note);
    }
    note.replaceChildren(text);
    if (retry) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = texts.retry;
      button.addEventListener("click", retry);
      note.append(button);
    }
  }

  function clearNote(item) {
    item.classList.remove("is-sending", "is-failed");
    const note = item.querySelector(".msg-note");
    if (note) note.remove();
  }

  async function postJson(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
    let data = {};
    try { data = await response.json(); } catch { /* an empty or non-JSON body */ }
    return { status: response.status, data, retryAfter: response.headers.get("Retry-After") };
  }

  async function deliver(text, clientId, item) {
    item.classList.add("is-sending");
    item.classList.remove("is-failed");
    setNote(item, texts.sending);
    const sentAt = Date.now();
    let problem = texts.failed;
    try {
      const { status, data, retryAfter } = await postJson("/chat/api/messages", { text, client_message_id: clientId });
      if (status === 202) {
        if (item.classList.contains("is-sending")) clearNote(item);
        if (lastReplyAt < sentAt) showTyping(true);
        return;
      }
      if (status === 429) problem = texts.tooFast.replace("{seconds}", retryAfter || "60");
      else if (status === 422 && data.field === "text") problem = texts.tooLong;
    } catch {
      problem = texts.offline;
    }
    item.classList.remove("is-sending");
    item.classList.add("is-failed");
    setNote(item, `${texts.notSent} ${problem}`, () => deliver(text, clientId, item));
  }

  function send(text) {
    const clientId = newClientId();
    const item = addMessage({ who: "you", text });
    mine.set(clientId, item);
    deliver(text, clientId, item);
  }

  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    send(text);
    input.focus();
  });

  // -- live replies: the server streams the conversation; the browser resumes with Last-Event-ID.

  function handle(event) {
    if (!event || seen.has(event.key)) return;
    seen.add(event.key);
    if (event.kind === "visitor") {
      const item = mine.get(event.client_message_id);
      if (item) {
        clearNote(item);
        return;
      }
      addMessage({ who: "you", text: event.text });
    } else if (event.kind === "reply") {
      lastReplyAt = Date.now();
      showTyping(false);
      addMessage({ who: event.author === "staff" ? "staff" : "bot", text: event.text, buttons: event.buttons });
    }
  }

  let source = null;
  function connect() {
    source = new EventSource("/chat/api/events");
    source.addEventListener("open", () => { connection.textContent = ""; });
    source.addEventListener("message", (message) => {
      try { handle(JSON.parse(message.data)); } catch { /* ignore a malformed event */ }
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        // The server refused the stream (for example too many tabs): try again later.
        setTimeout(connect, 10000);
      }
      connection.textContent = texts.reconnecting;
    });
  }
  connect();
  window.addEventListener("pagehide", () => { if (source) source.close(); });

  // -- verification ----------------------------------------------------------------------------

  const dialog = $("#verify");
  const startForm = $("#verify-start");
  const codeForm = $("#verify-code");
  const status = $("#verify-status");
  const opener = $("#verify-open");
  const endChat = $("#end-chat");

  function say(text, isError) {
    status.textContent = text;
    status.classList.toggle("is-error", Boolean(isError));
  }

  function showStep(step) {
    startForm.hidden = step !== "start";
    codeForm.hidden = step !== "code";
    (step === "start" ? $("#verify-phone") : $("#verify-code-input")).focus();
  }

  opener.addEventListener("click", () => {
    say("");
    dialog.showModal();
    showStep("start");
  });
  dialog.querySelectorAll("[data-close]").forEach((button) => button.addEventListener("click", () => dialog.close()));
  dialog.addEventListener("close", () => input.focus());
  $("#verify-again").addEventListener("click", () => { say(""); showStep("start"); });

  function busy(form, on) {
    form.querySelectorAll("button").forEach((button) => { button.disabled = on; });
    if (on) say(texts.working);
  }

  startForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const phone = $("#verify-phone").value.trim();
    const dob = $("#verify-dob").value;
    if (!phone) return say(texts.checkPhone, true), $("#verify-phone").focus();
    if (!dob) return say(texts.checkDob, true), $("#verify-dob").focus();
    busy(startForm, true);
    try {
      const { status: code, data, retryAfter } = await postJson("/chat/api/verify/start", { phone, date_of_birth: dob, lang });
      if (code === 202) {
        showStep("code");
        say(data.message);
      } else if (code === 422) {
        say(data.field === "phone" ? texts.checkPhone : texts.checkDob, true);
      } else if (code === 429) {
        say(data.message || texts.tooFast.replace("{seconds}", retryAfter || "60"), true);
      } else {
        say(texts.failed, true);
      }
    } catch {
      say(texts.offline, true);
    } finally {
      busy(startForm, false);
    }
  });

  codeForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const field = $("#verify-code-input");
    const code = field.value.replace(/[\s-]/g, "");
    if (!/^\d{6}$/.test(code)) return say(texts.checkCode, true), field.focus();
    busy(codeForm, true);
    try {
      const { status: result, data, retryAfter } = await postJson("/chat/api/verify/code", { code, lang });
      if (result === 200) {
        field.value = "";
        $("#verified-name").textContent = data.name ? `: ${data.name}` : "";
        $("#identity-verified").hidden = false;
        $("#identity-anonymous").hidden = true;
        $("#privacy-before").hidden = true;
        opener.hidden = true;
        endChat.hidden = false;
        dialog.close();
        return;
      }
      if (result === 429) {
        say(texts.tooFast.replace("{seconds}", retryAfter || "60"), true);
      } else if (result === 422) {
        say(texts.checkCode, true);
      } else {
        const left = data.status === "wrong" ? ` ${texts.attemptsLeft.replace("{n}", data.attempts_left)}` : "";
        say((data.message || texts.failed) + left, true);
        field.select();
      }
    } catch {
      say(texts.offline, true);
    } finally {
      busy(codeForm, false);
    }
  });

  endChat.addEventListener("click", async () => {
    try {
      await postJson("/chat/api/session/end", {});
    } finally {
      window.location.reload();
    }
  });
})();

// chatnet's browser client: the chatnet protocol (seeds/PROTOCOL.md) over a WebSocket.
//
// The page's script, and the only one: the server's Content-Security-Policy
// allows no inline script.  Every text the server or a user sends is shown
// with textContent, never as HTML.  The password lives only in this page's
// memory, for logging in again after a lost connection; it is never stored.
//
// What happens to a typed line:
//   - connected and logged in: it is sent at once, as one binary message;
//   - otherwise it waits ("waiting" on screen) and is sent, in order, right
//     after the next login (after "chatwith/" picks the partner again);
//   - when a connection ends, the lines the browser had not yet handed to the
//     network (WebSocket.bufferedAmount) go back to the front of the waiting
//     ones.  A line handed to the network just before the server vanished can
//     still be lost: a page cannot see TCP's acknowledgements.
"use strict";

(function () {
  var RELAY = /^chat\/([A-Za-z0-9._-]{1,7}): ([\s\S]*)$/;
  var ID = /^[A-Za-z0-9._-]{1,7}$/;
  var NOTICE_REPLACED = "you logged in from another place";
  var NOTICE_REMOVED = "your account was removed";
  var FIRST_RETRY_MS = 1000, LAST_RETRY_MS = 30000;
  var MAX_PARTIAL = 65536;
  var MESSAGE_SIZE = 4096;

  var encoder = new TextEncoder();
  var decoder = new TextDecoder("utf-8");

  var $ = function (id) { return document.getElementById(id); };

  // --------------------------------------------------------------- state
  var socket = null;          // the WebSocket, while there is one
  var phase = "out";          // out | connecting | login-sent | in | retrying | over
  var user = null, password = null;   // this page's memory only
  var loggedInOnce = false;   // a "0" after that means the account changed: stop retrying
  var partner = null;         // the partner chosen (kept across reconnects)
  var asked = [];             // chatwith/ IDs whose answer has not come yet
  var waiting = [];           // lines typed, not yet sent: {text, item}
  var inFlight = [];          // lines sent on this socket: {text, item, end}
  var sentBytes = 0;          // bytes handed to this socket
  var partial = new Uint8Array(0);    // the server's line under way
  var unread = new Map();     // sender -> messages from people other than the partner
  var retryMs = FIRST_RETRY_MS, retryTimer = null;

  // --------------------------------------------------------------- screen
  function setStatus(text, kind) {
    var status = $("status");
    status.textContent = text;
    status.className = kind || "";
  }

  function show(kind, sender, text) {
    var item = document.createElement("li");
    item.className = kind;
    item.dir = "auto";
    if (sender !== null) {
      var who = document.createElement("span");
      who.className = "sender";
      who.dir = "auto";
      who.textContent = sender;
      item.appendChild(who);
      item.appendChild(document.createTextNode(": "));
    }
    var body = document.createElement("span");
    body.dir = "auto";
    body.textContent = text;
    item.appendChild(body);
    var list = $("messages");
    var atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
    list.appendChild(item);
    if (atBottom) list.scrollTop = list.scrollHeight;
    return item;
  }

  function showPartner(words) {
    $("partner-now").textContent = partner === null ? "no partner yet" : partner + " " + words;
  }

  function showUnread() {
    var box = $("unread");
    box.textContent = "";
    if (unread.size === 0) return;
    box.appendChild(document.createTextNode("Unread: "));
    unread.forEach(function (count, sender) {
      var button = document.createElement("button");
      button.type = "button";
      button.textContent = sender + " (" + count + ")";
      button.title = "chat with " + sender;
      button.addEventListener("click", function () { choose(sender); });
      box.appendChild(button);
    });
  }

  // --------------------------------------------------------------- the connection
  function connect() {
    clearTimeout(retryTimer);
    phase = "connecting";
    setStatus(loggedInOnce ? "reconnecting…" : "connecting…");
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    try {
      socket = new WebSocket(scheme + "//" + location.host + "/chat");
    } catch (error) {
      socket = null;
      lost("cannot open a WebSocket: " + error.message);
      return;
    }
    socket.binaryType = "arraybuffer";
    sentBytes = 0;
    inFlight = [];
    partial = new Uint8Array(0);
    var mine = socket;
    socket.onopen = function () {
      if (socket !== mine) return;
      phase = "login-sent";
      send(loginFrame(user, password));
    };
    socket.onmessage = function (event) {
      if (socket !== mine) return;
      var bytes = typeof event.data === "string" ? encoder.encode(event.data)
                                                : new Uint8Array(event.data);
      received(bytes);
    };
    socket.onclose = function () {
      if (socket !== mine) return;
      closed(mine);
    };
  }

  function loginFrame(id, secret) {
    var frame = new Uint8Array(16);
    frame.set(encoder.encode(id), 0);
    frame.set(encoder.encode(secret), 8);
    return frame;
  }

  function send(bytes) {
    // At most 4096 bytes a message: the server takes a frame of one default line's
    // worth whatever its --max-line, and a longer line simply spans messages.
    for (var start = 0; start < bytes.length; start += MESSAGE_SIZE) {
      socket.send(bytes.subarray(start, start + MESSAGE_SIZE));
    }
    sentBytes += bytes.length;
  }

  function sendLine(entry) {
    var bytes = encoder.encode("chat/" + entry.text + "\n");
    send(bytes);
    entry.end = sentBytes;
    inFlight.push(entry);
    entry.item.className = "mine";
    // What the browser has handed to the network is out of its hands (and ours).
    var handedOn = sentBytes - socket.bufferedAmount;
    while (inFlight.length && inFlight[0].end <= handedOn) inFlight.shift();
  }

  function closed(old) {
    socket = null;
    // Lines the browser never handed to the network go back, ahead of the waiting ones.
    var handedOn = sentBytes - old.bufferedAmount;
    var back = inFlight.filter(function (entry) { return entry.end > handedOn; });
    inFlight = [];
    back.forEach(function (entry) { entry.item.className = "mine waiting"; });
    waiting = back.concat(waiting);
    asked = [];
    if (phase === "out" || phase === "over") return;
    if (phase === "login-sent" && !loggedInOnce) {
      loginProblem("the server closed the connection before answering; try again");
      phase = "out";
      return;
    }
    lost("connection lost");
  }

  function lost(why) {
    phase = "retrying";
    var seconds = Math.round(retryMs / 1000);
    setStatus(why + "; trying again in " + seconds + " s", "offline");
    retryTimer = setTimeout(connect, retryMs * (0.8 + 0.4 * Math.random()));
    retryMs = Math.min(retryMs * 2, LAST_RETRY_MS);
  }

  // --------------------------------------------------------------- what the server says
  function received(bytes) {
    var joined = new Uint8Array(partial.length + bytes.length);
    joined.set(partial, 0);
    joined.set(bytes, partial.length);
    var start = 0;
    for (var i = 0; i < joined.length; i++) {
      if (joined[i] === 10) {
        line(decoder.decode(joined.subarray(start, i)));
        start = i + 1;
        if (socket === null) return;          // the line ended this connection
      }
    }
    partial = joined.slice(start);
    if (partial.length > MAX_PARTIAL) partial = new Uint8Array(0);   // never from a chatnet server
  }

  function line(text) {
    if (phase === "login-sent") {
      if (text === "1") return loggedIn();
      if (text === "0") return loginRefused();
      return show("notice", null, text.replace(/^chat\//, ""));
    }
    if (text === "0" || text === "1" || text === "2") return answer(text);
    var relay = RELAY.exec(text);
    if (relay) return message(relay[1], relay[2]);
    var notice = text.replace(/^chat\//, "");
    show("notice", null, notice);
    if (notice.indexOf(NOTICE_REPLACED) === 0 || notice.indexOf(NOTICE_REMOVED) === 0) {
      over(notice.indexOf(NOTICE_REPLACED) === 0
           ? "you logged in from another place; this page stopped" : "your account was removed");
    }
  }

  function loggedIn() {
    phase = "in";
    loggedInOnce = true;
    retryMs = FIRST_RETRY_MS;
    setStatus("logged in as " + user, "online");
    $("login").hidden = true;
    $("chat").hidden = false;
    if (partner !== null) {                   // after a reconnect: the same partner again
      asked.push(partner);
      send(encoder.encode("chatwith/" + partner + "\n"));
    } else {
      showPartner("");
      $("partner").focus();
    }
    var lines = waiting;
    waiting = [];
    lines.forEach(sendLine);
  }

  function loginRefused() {
    var old = socket;
    phase = loggedInOnce ? "over" : "out";
    socket = null;
    old.close();
    password = null;
    if (loggedInOnce) {
      setStatus("the server no longer accepts this ID and password", "offline");
      showLogin("log in again: the server refused the saved password");
    } else {
      setStatus("not connected");
      loginProblem("wrong ID or password");
    }
  }

  function answer(code) {
    var id = asked.length ? asked.shift() : partner;  // none asked: the partner logged in ("2")
    if (id !== partner) return;                        // an answer to a choice since replaced
    if (code === "0") {
      showPartner("— no such account");
      partner = null;
    } else {
      showPartner(code === "2" ? "(online)" : "(offline: your messages are stored)");
    }
  }

  function message(sender, text) {
    var other = sender !== partner;
    show(other ? "other" : "theirs", sender, text);
    if (other) {
      unread.set(sender, (unread.get(sender) || 0) + 1);
      showUnread();
    }
  }

  function over(why) {
    phase = "over";
    clearTimeout(retryTimer);
    setStatus(why, "offline");
    if (socket !== null) {
      var old = socket;
      socket = null;
      old.close();
    }
    showLogin("");
  }

  // --------------------------------------------------------------- what the user does
  function loginProblem(text) {
    $("login-problem").textContent = text;
    $("login").hidden = false;
    $("user").focus();
  }

  function showLogin(problem) {
    $("login").hidden = false;
    $("login-problem").textContent = problem;
    $("password").value = "";
    $("password").focus();
  }

  function choose(id) {
    partner = id;
    if (unread.delete(id)) showUnread();
    showPartner("…");
    if (phase === "in") {
      asked.push(id);
      send(encoder.encode("chatwith/" + id + "\n"));
    }
  }

  $("login").addEventListener("submit", function (event) {
    event.preventDefault();
    var id = $("user").value.trim();
    var secret = $("password").value;
    var secretBytes = encoder.encode(secret).length;
    if (!ID.test(id)) return loginProblem("an ID is 1 to 7 of A-Z a-z 0-9 . _ -");
    if (secretBytes < 1 || secretBytes > 7 || secret.indexOf("\0") >= 0) {
      return loginProblem("a password is 1 to 7 bytes");
    }
    if (user !== null && id !== user) {      // another account: start a new conversation
      partner = null;
      waiting = [];
      unread.clear();
      showUnread();
      $("messages").textContent = "";
    }
    user = id;
    password = secret;
    $("password").value = "";                // the field keeps nothing
    $("login-problem").textContent = "";
    if (socket !== null) { var old = socket; socket = null; old.close(); }
    connect();
  });

  $("partner-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var id = $("partner").value.trim();
    if (!ID.test(id)) {
      show("problem", null, "an ID is 1 to 7 of A-Z a-z 0-9 . _ -");
      return;
    }
    choose(id);
    $("line").focus();
  });

  $("say").addEventListener("submit", function (event) {
    event.preventDefault();
    var text = $("line").value;
    if (text === "") return;
    $("line").value = "";
    var entry = {text: text, item: show("mine waiting", "me → " + (partner || "?"), text), end: 0};
    if (phase === "in" && socket !== null) sendLine(entry);
    else waiting.push(entry);
  });

  $("logout").addEventListener("click", function () {
    phase = "out";
    clearTimeout(retryTimer);
    password = null;
    if (socket !== null) { var old = socket; socket = null; old.close(1000); }
    setStatus("logged out");
    $("chat").hidden = true;
    showLogin("");
  });

  showPartner("");
})();

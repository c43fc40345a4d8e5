// The web chat page: sign in as (name, device), send texts to one peer, show what arrives and
// the state of what was sent (✓ accepted by the server, ✓✓ delivered, read).
import { connect } from "bimip";

const $ = (id) => document.getElementById(id);
const LABEL = { sending: "…", sent: "✓", delivered: "✓✓", read: "✓✓ read" };
const RANK = { sending: 0, sent: 1, delivered: 2, read: 3 };

let client = null;
let peer = "";
const outgoing = new Map(); // messageId -> <li> of a message sent by this user
const states = new Map(); // messageId -> best state known (a receipt may come before the row knows its id)
const unread = []; // received while the page was hidden: marked read once it is shown

// ?me=alice&device=web&peer=bob fills the form (the page puts them there after signing in).
const params = new URLSearchParams(location.search);
for (const k of ["me", "device", "peer"]) if (params.get(k)) $(k).value = params.get(k);

/** A bare name stands for name@example.com (the server wants an EID, local@domain). */
const toEid = (name) => (name.includes("@") ? name : `${name}@example.com`);
const notice = (text) => ($("notice").textContent = text);
const describe = (e) =>
  e?.kind ? `${e.kind}${e.closeCode ? ` (close ${e.closeCode})` : ""}${e.details ? `: ${e.details}` : ""}` : String(e?.message ?? e);

function setStatus(text, online) {
  $("status").textContent = text;
  $("status").classList.toggle("offline", !online);
  $("text").disabled = $("send").disabled = !online;
}

function addRow(kind, who, text) {
  const li = document.createElement("li");
  li.className = `msg ${kind}`;
  for (const [cls, value] of [["who", who], ["text", text], ...(kind === "out" ? [["state", ""]] : [])]) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = value;
    li.append(span);
  }
  $("log").append(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

function showState(li, state) {
  li.dataset.state = state;
  li.querySelector(".state").textContent = LABEL[state];
  li.querySelector(".state").title = state;
}

/** Records a state of a sent message (never going back) and shows it on its row. */
function advance(messageId, state) {
  if (RANK[states.get(messageId)] >= RANK[state]) return;
  states.set(messageId, state);
  const li = outgoing.get(messageId);
  if (li) showState(li, state);
}

function markRead(m) {
  client?.ack(m.messageId, "read").catch((e) => notice(`could not mark as read: ${describe(e)}`));
}

async function fetchToken(eid, device) {
  const r = await fetch("/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ eid, device }),
  });
  if (!r.ok) throw new Error(`no token: ${await r.text()}`);
  return (await r.json()).token;
}

function signedOut(text) {
  client = null;
  setStatus("disconnected", false);
  notice(text);
  $("login").hidden = false;
  $("logout").hidden = true;
  $("connect").disabled = false;
}

$("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  const me = toEid($("me").value.trim());
  const device = $("device").value.trim();
  peer = toEid($("peer").value.trim());
  $("connect").disabled = true;
  notice("connecting…");
  let url = "";
  try {
    ({ url } = await (await fetch("/config.json")).json());
    // getToken: a fresh token for every connection (also after a lost connection, reconnect: true).
    client = await connect(url, { getToken: () => fetchToken(me, device), reconnect: true });
  } catch (err) {
    const hint = err?.kind === "connect_failed" ? ` (is \`bimip serve\` running at ${url}?)` : "";
    notice(`could not connect: ${describe(err)}${hint}`);
    $("connect").disabled = false;
    return;
  }
  const c = client;
  const online = `${me} (${device}) · chatting with ${peer}`;

  // Listeners go on right after connect(): messages queued while offline come next.
  c.on("message", (m) => {
    const text = m.text ?? `[media] ${m.mediaUrl ?? ""}`;
    if (m.author === "sender") {
      // A copy of a message this user sent from another device.
      const li = addRow("out", `you (${m.from.device}) → ${m.to.join(", ")}`, text);
      outgoing.set(m.messageId, li);
      showState(li, states.get(m.messageId) ?? "sent");
      return;
    }
    addRow("in", m.from.eid, text);
    if (document.visibilityState === "visible") markRead(m);
    else unread.push(m);
  });
  c.on("receipt", (r) => {
    if (r.state === "delivered" || r.state === "read") advance(r.messageId, r.state);
  });
  c.on("error", (err) => {
    if (err.kind !== "session_replaced") notice(describe(err)); // the close that follows says it
  });
  c.on("close", ({ code, reconnecting, error }) => {
    if (client !== c) return; // an earlier sign-in of this page
    if (reconnecting) setStatus(`connection lost (${error.kind}), reconnecting…`, false);
    else if (code === 4409) signedOut("This device signed in again somewhere else (another tab?): this page is disconnected.");
    else if (code === 1000) signedOut("Signed out.");
    else signedOut(`Disconnected: ${describe(error)}`);
  });
  c.on("reconnect", () => {
    setStatus(online, true);
    notice("");
  });

  $("login").hidden = true;
  $("logout").hidden = false;
  $("chat").hidden = false;
  setStatus(online, true);
  notice("");
  $("text").focus();
  history.replaceState(null, "", `?${new URLSearchParams({ me, device, peer })}`);
});

$("compose").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text || !client) return;
  $("text").value = "";
  const li = addRow("out", `you → ${peer}`, text);
  showState(li, "sending");
  try {
    const sent = await client.sendText(peer, text);
    li.dataset.messageId = sent.messageId;
    outgoing.set(sent.messageId, li);
    advance(sent.messageId, "sent");
    showState(li, states.get(sent.messageId));
  } catch (err) {
    li.classList.add("failed");
    li.querySelector(".state").textContent = `not sent: ${describe(err)}`;
  }
});

$("logout").addEventListener("click", async () => {
  const c = client;
  if (!c) return;
  await c.logout(); // usually the close event has said "Signed out." by now
  if (client === c) signedOut("Signed out.");
});

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") for (const m of unread.splice(0)) markRead(m);
});

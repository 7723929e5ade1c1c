// gancho dashboard: the small layer over pages that work without it. It never writes text
// from the server's data as HTML: live rows are built with textContent; the overview's
// fragment is HTML the server rendered and escaped.
"use strict";

// The overview's figures refresh themselves every 2 s, while the box names where from.
function liveFigures() {
  const box = document.querySelector("[data-live]");
  if (!box) return;
  const timer = setInterval(async () => {
    const from = box.dataset.live;
    if (!from) { clearInterval(timer); return; }
    try {
      const answer = await fetch(from, { credentials: "same-origin" });
      if (answer.status === 401) { window.location.assign("/sign-in?next=/"); return; }
      if (answer.ok && box.dataset.live) box.innerHTML = await answer.text();
    } catch (_) { /* the next tick tries again */ }
  }, 2000);
}

function cell(row, text, href) {
  const td = document.createElement("td");
  if (href) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    td.appendChild(a);
  } else {
    td.textContent = text;
  }
  row.appendChild(td);
}

// The Events page's live tail: Server-Sent Events from /events/live.
function liveTail() {
  const table = document.getElementById("live-tail");
  if (!table || !window.EventSource) return;
  const body = table.tBodies[0];
  const status = document.getElementById("live-status");
  const source = new EventSource(table.dataset.stream);
  source.onopen = () => { status.textContent = "Live: new events appear here as they are stored."; };
  source.onerror = () => {
    // A closed source does not come back (the session ended: the answer was 401).
    status.textContent = source.readyState === EventSource.CLOSED
      ? "Live tail stopped: reload the page (sign in again if asked)."
      : "Live tail disconnected; reconnecting…";
  };
  source.addEventListener("event", (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch (_) { return; }
    const row = document.createElement("tr");
    row.className = "fresh";
    row.dataset.seq = String(event.seq);
    cell(row, "#" + event.seq, "/events/" + encodeURIComponent(event.seq));
    cell(row, String(event.time).replace("T", " ").replace(/\.\d+/, "").replace("Z", " UTC"));
    cell(row, event.source + "." + event.type);
    const keys = Object.entries(event.keys || {}).map(([k, v]) => k + "=" + v).join(" ");
    cell(row, keys);
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > 200) body.deleteRow(body.rows.length - 1);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  liveFigures();
  liveTail();
});

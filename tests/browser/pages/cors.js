// The page side of tests/browser/test_cors_browser.py: fetch() from this
// origin to the gateway's, and a results table for the screenshot.
"use strict";

document.getElementById("origin").textContent = "page origin: " + location.origin;

// c: {url, init, repeat, read: [header names], timeout_ms}
// Resolves to what the page could see of the last of `repeat` fetches:
//   {outcome: "resolved", status, type, headers: {name: value|null}, body}
//   {outcome: "rejected", error, message}
window.gwcFetch = async function (c) {
  let last = null;
  for (let i = 0; i < (c.repeat || 1); i++) {
    const init = Object.assign({}, c.init || {});
    init.signal = AbortSignal.timeout(c.timeout_ms || 10000);  // every wait has a deadline
    try {
      const r = await fetch(c.url, init);
      const headers = {};
      for (const name of c.read || []) headers[name.toLowerCase()] = r.headers.get(name);
      const body = await r.text();
      last = { outcome: "resolved", status: r.status, type: r.type, headers: headers, body: body };
    } catch (e) {
      last = { outcome: "rejected", error: e.name, message: String(e.message) };
    }
  }
  return last;
};

let rows = 0, failed = 0;
window.gwcShow = function (name, origin, request, seen, ok) {
  rows += 1;
  if (!ok) failed += 1;
  const tr = document.createElement("tr");
  tr.className = ok ? "pass" : "fail";
  for (const [text, cls] of [[String(rows), ""], [name, ""], [origin, ""], [request, "req"], [seen, "got"],
                             [ok ? "pass" : "FAIL", "verdict"]]) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  document.querySelector("#results tbody").appendChild(tr);
  document.getElementById("summary").textContent = `${rows} cases, ${rows - failed} passed, ${failed} failed`;
};

// autoscale web page: send each chosen or dropped photo to POST /v1/count?overlay=inline, one at a
// time (the server counts one image at a time), and show its count, overlay, refined regions and
// CSV / JSON downloads. Plain JavaScript, no dependencies: everything comes from this server.
"use strict";

(function () {
  const $ = (sel, root = document) => root.querySelector(sel);
  const results = $("#results");
  const statusEl = $("#status");
  const tokenForm = $("#token-form");
  const tokenInput = $("#token");
  const allCsv = $("#all-csv");
  const clearBtn = $("#clear");
  const template = $("#card-template");

  let token = sessionStorage.getItem("autoscale-token") || "";
  let variant = null;
  const jobs = [];      // waiting {file, card}
  const done = [];      // {name, body}
  let running = false;
  let waitingForToken = false;
  const MAX_RETRIES = 8;

  function authHeaders(xhrOrHeaders) {
    if (!token) return;
    if (xhrOrHeaders instanceof XMLHttpRequest) xhrOrHeaders.setRequestHeader("Authorization", "Bearer " + token);
    else xhrOrHeaders.Authorization = "Bearer " + token;
  }

  function askToken(why) {
    tokenForm.hidden = false;
    $("#token-why").textContent = why;
    tokenInput.focus();
  }

  function fmtCount(x) {
    return variant === "localization" ? String(Math.round(x)) : x.toFixed(1);
  }

  function setStatus() {
    const left = jobs.length + (running ? 1 : 0);
    statusEl.textContent = left ? `${left} photo${left > 1 ? "s" : ""} left to count` : (done.length ? `${done.length} counted` : "");
    allCsv.hidden = done.length === 0;
    clearBtn.hidden = results.children.length === 0;
    if (done.length) {
      const rows = ["image,count,first_pass_count,width,height"];
      for (const d of done) {
        rows.push([csvField(d.name), d.body.count, d.body.first_pass_count, d.body.width, d.body.height].join(","));
      }
      setBlobLink(allCsv, rows.join("\n") + "\n", "text/csv");
    }
  }

  function csvField(s) {
    return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }

  function setBlobLink(a, text, type) {
    if (a.dataset.url) URL.revokeObjectURL(a.dataset.url);
    const url = URL.createObjectURL(new Blob([text], { type }));
    a.href = url;
    a.dataset.url = url;
  }

  async function loadModel() {
    const headers = {};
    authHeaders(headers);
    try {
      const r = await fetch("/v1/model", { headers });
      const body = await r.json();
      if (r.status === 401) {
        $("#model").textContent = "The model is hidden until you give the access token.";
        askToken(body.detail || "This server needs an access token.");
        return false;
      }
      if (!r.ok) throw new Error(body.detail || r.statusText);
      variant = body.variant;
      let what = body.variant === "localization" ? "heads are shown as points" : "the density is shown as a heat map";
      if (body.method !== "fpn") what += "; a refined dense region is boxed with its zoom factor";
      $("#model").textContent = `Model ${body.checkpoint}: ${body.method || "?"} ${body.variant}, backbone ${body.backbone || "?"} (${what}).`;
      return true;
    } catch (err) {
      $("#model").textContent = "Cannot reach the server: " + err.message;
      return false;
    }
  }

  function addFiles(files) {
    for (const file of files) {
      if (file.type && !file.type.startsWith("image/")) {
        const card = makeCard(file);
        fail(card, `${file.name} is not an image (${file.type}).`);
        continue;
      }
      jobs.push({ file, card: makeCard(file), tries: 0 });
    }
    setStatus();
    pump();
  }

  function makeCard(file) {
    const card = template.content.firstElementChild.cloneNode(true);
    $(".name", card).textContent = file.name;
    const img = $(".picture", card);
    img.src = URL.createObjectURL(file);
    img.alt = `${file.name} (not counted yet)`;
    img.addEventListener("load", () => { if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src); }, { once: true });
    results.appendChild(card);
    return card;
  }

  function state(card, text, value) {
    const p = $(".progress", card);
    if (value === undefined) p.removeAttribute("value"); else p.value = value;
    p.hidden = value === null;
    $(".state-text", card).textContent = text;
  }

  function fail(card, message) {
    card.classList.add("failed");
    state(card, message, null);
    $(".state-text", card).classList.add("error");
    setStatus();
  }

  function pump() {
    if (running || waitingForToken || jobs.length === 0) return;
    running = true;
    const job = jobs.shift();
    send(job).finally(() => {
      running = false;
      setStatus();
      pump();
    });
  }

  function send(job) {
    return new Promise((resolve) => {
      const { file, card } = job;
      const xhr = new XMLHttpRequest();
      const form = new FormData();
      form.append("file", file, file.name);
      xhr.open("POST", "/v1/count?overlay=inline");
      authHeaders(xhr);
      xhr.responseType = "json";
      let timer = null;
      const started = performance.now();
      state(card, "Uploading… 0 %", 0);
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable) state(card, `Uploading… ${Math.round((100 * e.loaded) / e.total)} %`, e.loaded / e.total);
      };
      xhr.upload.onload = () => {
        const t0 = performance.now();
        state(card, "Counting…");
        timer = setInterval(() => state(card, `Counting… ${((performance.now() - t0) / 1000).toFixed(0)} s`), 1000);
      };
      const finish = () => { if (timer) clearInterval(timer); resolve(); };
      xhr.onerror = () => { finish(); fail(card, "The server could not be reached."); };
      xhr.onload = () => {
        finish();
        const body = xhr.response || {};
        if (xhr.status === 200) {
          show(card, file.name, body, performance.now() - started);
        } else if (xhr.status === 503 && job.tries < MAX_RETRIES) {
          job.tries += 1;
          const wait = Math.max(1, parseInt(xhr.getResponseHeader("Retry-After") || "2", 10));
          state(card, `The server is busy; retrying in ${wait} s…`, null);
          setTimeout(() => { jobs.unshift(job); pump(); }, wait * 1000);
        } else if (xhr.status === 401) {
          jobs.unshift(job);
          waitingForToken = true;
          state(card, "Waiting for the access token…", null);
          askToken(body.detail || "This server needs an access token.");
        } else {
          fail(card, `Not counted: ${body.detail || xhr.statusText || "HTTP " + xhr.status}`);
        }
      };
      xhr.send(form);
    });
  }

  function show(card, name, body, ms) {
    variant = body.model.variant;
    card.classList.add("counted");
    state(card, `Counted in ${(ms / 1000).toFixed(1)} s (server ${(body.elapsed_ms / 1000).toFixed(1)} s).`, null);
    const result = $(".result", card);
    result.hidden = false;
    const count = $(".count", card);
    count.textContent = fmtCount(body.count);
    count.dataset.count = String(body.count);
    $(".first", card).textContent = `(first pass alone: ${fmtCount(body.first_pass_count)}; ${body.width}×${body.height} px)`;
    const img = $(".picture", card);
    if (body.overlay) {
      img.src = body.overlay;
      img.alt = `${name}: ${fmtCount(body.count)} people; ` +
        (body.model.variant === "localization" ? `${body.points.length} heads marked` : "density heat map") +
        (body.regions.length ? `; ${body.regions.length} refined region(s) boxed` : "");
    }
    const pts = body.points.length ? ` ${body.points.length} head points.` : "";
    $(".caption", card).textContent = `Model ${body.model.name} (${body.model.variant}, ${body.model.backbone || "?"}).${pts}`;
    const table = $(".regions", card);
    const tbody = $("tbody", table);
    for (const r of body.regions) {
      const tr = document.createElement("tr");
      for (const v of [r.box.map((x) => x.toFixed(0)).join(", "), "×" + r.scale.toFixed(2),
        r.count_before.toFixed(1), r.count_after.toFixed(1)]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    }
    table.hidden = body.regions.length === 0;
    const stem = name.replace(/\.[^.]*$/, "") || "image";
    const csv = $(".csv", card);
    setBlobLink(csv, "x,y\n" + body.points.map((p) => `${p[0]},${p[1]}`).join("\n") + (body.points.length ? "\n" : ""), "text/csv");
    csv.download = `${stem}_points.csv`;
    const json = $(".json", card);
    const plain = Object.assign({}, body, { image: name });
    delete plain.overlay;
    setBlobLink(json, JSON.stringify(plain, null, 1), "application/json");
    json.download = `${stem}.json`;
    $(".downloads", card).hidden = false;
    done.push({ name, body: plain });
    setStatus();
  }

  // ----------------------------------------------------------------------- wiring
  const input = $("#files");
  input.addEventListener("change", () => {
    addFiles(Array.from(input.files));
    input.value = "";
  });

  const drop = $("#drop");
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    addFiles(Array.from(e.dataTransfer.files));
  });
  // A photo dropped anywhere else must not make the browser navigate away from the results.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  tokenForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    token = tokenInput.value.trim();
    sessionStorage.setItem("autoscale-token", token);
    if (await loadModel()) {
      tokenForm.hidden = true;
      waitingForToken = false;
      pump();
    }
  });

  clearBtn.addEventListener("click", () => {
    if (running || jobs.length) return;
    results.replaceChildren();
    done.length = 0;
    setStatus();
    input.focus();
  });

  loadModel();
})();

// The identity review page (backend/service/review.py): selection, and the POSTs of its operations.
// Every operation reloads the page, which then shows what the operation did.
"use strict";

(() => {
  const body = document.body;
  const project = body.dataset.project;
  const base = body.dataset.base;
  const headers = {[body.dataset.csrfHeader]: body.dataset.csrfValue};
  const status = document.getElementById("status");
  const STATUS_KEY = "autoannotator-review-status";

  const show = (message, isError) => {
    status.textContent = message;
    status.className = isError ? "error" : "done";
  };

  const faces = () => [...document.querySelectorAll(".face.selected")];
  const identities = () => [...document.querySelectorAll(".pick-identity:checked")].map(box => box.closest(".identity"));
  const faceFields = () => faces().flatMap(face => [["task", face.dataset.task], ["region", face.dataset.region]]);

  async function operate(operation, fields) {
    const form = new URLSearchParams({project});
    fields.forEach(([key, value]) => form.append(key, value));
    show("working…");
    document.querySelectorAll("button").forEach(button => { button.disabled = true; });
    let answer, ok;
    try {
      const response = await fetch(`${base}/${operation}`, {method: "POST", headers, body: form, credentials: "same-origin"});
      answer = await response.json();
      ok = response.ok;
    } catch (error) {
      answer = {detail: `no answer from the backend: ${error}`};
    }
    if (answer.entry === undefined) {  // refused: nothing changed
      show(answer.detail || "refused", true);
      document.querySelectorAll("button").forEach(button => { button.disabled = false; });
      updateSelection();
      return;
    }
    let message = ok ? `${answer.summary} · Label Studio: ${answer.label_studio}` : answer.detail;
    if (answer.job) ({message, ok} = await follow(answer));
    sessionStorage.setItem(STATUS_KEY, JSON.stringify({message, isError: !ok}));
    location.reload();
  }

  // An operation on many tasks updates Label Studio in a background job: its progress, then its outcome.
  async function follow(answer) {
    for (;;) {
      await new Promise(resolve => setTimeout(resolve, 1000));
      let job;
      try {
        job = await (await fetch(`${base}/jobs/${answer.job}`, {credentials: "same-origin"})).json();
      } catch (error) {
        continue;  // the backend restarting: its job row outlives it
      }
      if (job.status === "done") {
        const updated = job.result.predictions_updated;
        return {ok: true, message: `${answer.summary} · Label Studio: ${updated} prediction${updated === 1 ? "" : "s"} updated`};
      }
      if (job.status === "failed") {
        return {ok: false, message: `${answer.summary}: done in the face store (undo: operation ${answer.entry}), ` +
                                    `but Label Studio's predictions were not updated: ${job.message}`};
      }
      show(`${answer.summary} · updating Label Studio: ${Math.round(100 * Math.max(job.progress, 0))}% of ${answer.tasks} tasks`);
    }
  }

  function updateSelection() {
    const faceCount = faces().length, identityCount = identities().length;
    const parts = [];
    if (identityCount) parts.push(`${identityCount} identit${identityCount === 1 ? "y" : "ies"}`);
    if (faceCount) parts.push(`${faceCount} face${faceCount === 1 ? "" : "s"}`);
    document.getElementById("selection").textContent = parts.length ? `${parts.join(", ")} selected` : "Nothing selected";
    document.querySelector('[data-action="merge"]').disabled = identityCount < 2;
    for (const action of ["move", "move-new", "reject-face", "reject-person"]) {
      document.querySelector(`[data-action="${action}"]`).disabled = faceCount === 0;
    }
  }

  document.querySelectorAll(".face").forEach(face => face.addEventListener("click", () => {
    face.classList.toggle("selected");
    updateSelection();
  }));
  document.querySelectorAll(".pick-identity").forEach(box => box.addEventListener("change", () => {
    box.closest(".identity").classList.toggle("selected", box.checked);
    updateSelection();
  }));

  const actions = {
    merge() {  // into the largest of the ticked identities (the first of them on the page if two are as large)
      const picked = identities();
      const into = picked.reduce((best, row) => (+row.dataset.faces > +best.dataset.faces ? row : best));
      operate("merge", [["into", into.dataset.identity],
                        ...picked.filter(row => row !== into).map(row => ["identities", row.dataset.identity])]);
    },
    move() {
      const target = document.getElementById("move-to").value.trim();
      if (!target) { show("type the identity to move the faces to (person_7, or its name)", true); return; }
      operate("move", [...faceFields(), ["to", target]]);
    },
    "move-new"() { operate("move", [...faceFields(), ["to", "new"]]); },
    "reject-face"() { operate("reject", [...faceFields(), ["reason", "not_a_face"]]); },
    "reject-person"() { operate("reject", [...faceFields(), ["reason", "not_this_person"]]); },
    clear() {
      faces().forEach(face => face.classList.remove("selected"));
      document.querySelectorAll(".pick-identity:checked").forEach(box => { box.checked = false; box.closest(".identity").classList.remove("selected"); });
      updateSelection();
    },
  };
  document.querySelectorAll("[data-action]").forEach(button =>
    button.addEventListener("click", () => actions[button.dataset.action]()));

  document.querySelectorAll("form.rename").forEach(form => form.addEventListener("submit", event => {
    event.preventDefault();
    operate("rename", [["identity", form.closest(".identity").dataset.identity], ["name", form.elements.name.value]]);
  }));
  document.querySelectorAll(".merge-nearest").forEach(button => button.addEventListener("click", () =>
    operate("merge", [["identities", button.closest(".identity").dataset.identity], ["into", button.dataset.into]])));
  document.querySelectorAll(".undo").forEach(button => button.addEventListener("click", () =>
    operate("undo", [["entry", button.dataset.entry]])));
  document.addEventListener("keydown", event => { if (event.key === "Escape") actions.clear(); });

  const kept = sessionStorage.getItem(STATUS_KEY);
  if (kept) {
    sessionStorage.removeItem(STATUS_KEY);
    const {message, isError} = JSON.parse(kept);
    show(message, isError);
  }
  updateSelection();
})();

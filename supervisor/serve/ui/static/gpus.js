// The GPU view: memory used/total as a bar, which model holds what, and what bawt-vllm did not start.

import { bytes, el } from "./dom.js";

export function renderGpus(box, gpus) {
  if (!gpus.length) {
    box.replaceChildren(el("p", { text: "No GPU: NVML finds none on this machine, so models run on the CPU." }));
    return;
  }
  box.replaceChildren(...gpus.map(gpuCard));
}

function segment(kind, width, title) {
  const node = el("span", { class: kind, title });
  node.style.width = width;  // through the CSSOM: the page's CSP allows no inline style attributes
  return node;
}

function gpuCard(gpu) {
  const total = gpu.total_bytes || 1;
  const share = (n) => `${Math.max(0, (100 * n) / total).toFixed(2)}%`;
  const bar = el("div", { class: "bar" });
  const items = el("ul");
  let listed = 0;
  const byOwner = new Map();
  for (const process of gpu.processes) {
    const owner = process.alias || `pid ${process.pid}`;
    const entry = byOwner.get(owner) || { ours: Boolean(process.alias), bytes: 0, pids: [] };
    entry.bytes += process.used_bytes || 0;
    entry.pids.push(process.pid);
    byOwner.set(owner, entry);
  }
  let shade = 0;
  for (const [owner, entry] of byOwner) {
    listed += entry.bytes;
    const kind = entry.ours ? `ours c${shade++ % 4}` : "foreign";
    bar.append(segment(kind, share(entry.bytes), `${owner}: ${bytes(entry.bytes)}`));
    const budget = entry.ours && owner in gpu.budgets
      ? (gpu.budgets[owner] === null ? " · whole GPU" : ` · budget ${Math.round(gpu.budgets[owner] * 100)}%`) : "";
    const who = entry.ours ? el("strong", { text: owner })
      : el("span", { class: "tag-foreign", text: `not started by bawt-vllm (pid ${entry.pids.join(", ")})` });
    items.append(el("li", {}, el("span", { class: `swatch ${kind}`, "aria-hidden": "true" }), who,
                    ` — ${bytes(entry.bytes)}${budget}`));
  }
  for (const [alias, budget] of Object.entries(gpu.budgets)) {
    if (!byOwner.has(alias)) {
      items.append(el("li", {}, el("strong", { text: alias }),
                      ` — ${budget === null ? "whole GPU" : `budget ${Math.round(budget * 100)}%`}, no memory in use yet`));
    }
  }
  const rest = gpu.used_bytes - listed;
  if (rest > 0) bar.append(segment("other", share(rest), `other: ${bytes(rest)}`));
  if (!items.children.length) items.append(el("li", { text: "nothing running on it" }));
  const used = `${bytes(gpu.used_bytes)} of ${bytes(gpu.total_bytes)} used (${Math.round((100 * gpu.used_bytes) / total)}%)`;
  const foreign = gpu.foreign_bytes ? `, ${bytes(gpu.foreign_bytes)} of it not started by bawt-vllm` : "";
  bar.setAttribute("role", "img");
  bar.setAttribute("aria-label", `memory of GPU ${gpu.index}: ${used}${foreign}`);
  const budgetUsed = gpu.budget_used === null ? "" : ` · budgets ${Math.round(gpu.budget_used * 100)}% taken`;
  return el("article", { class: "gpu", "data-gpu": String(gpu.index) },
    el("h3", { text: `GPU ${gpu.index} · ${gpu.name}` }), el("p", { text: `${used}${budgetUsed}` }), bar, items);
}

// The review page's only script: sort and filter the cards, open a card's detail view. It never
// builds HTML from data (every card is already in the page, escaped when it was written).
(function () {
  "use strict";
  const grid = document.getElementById("cards");
  const cards = Array.from(grid.querySelectorAll("article.card"));
  const key = document.getElementById("sort-key");
  const dir = document.getElementById("sort-dir");
  const filter = document.getElementById("filter");
  const shown = document.getElementById("shown-count");

  function value(card, k) {
    if (k === "uri") return card.dataset.uri;
    const v = card.dataset[k.replace(/_([a-z])/g, (m, c) => c.toUpperCase())];
    return v === "" || v === undefined ? NaN : Number(v);
  }

  function sort() {
    const k = key.value, desc = dir.dataset.dir === "desc";
    const sorted = cards.slice().sort((a, b) => {
      const va = value(a, k), vb = value(b, k);
      const missA = typeof va === "number" && isNaN(va), missB = typeof vb === "number" && isNaN(vb);
      let c;
      if (missA || missB) c = missA - missB;  // missing values last, in either direction
      else {
        c = typeof va === "string" ? va.localeCompare(vb) : va - vb;
        if (desc) c = -c;
      }
      return c || Number(a.dataset.i) - Number(b.dataset.i);
    });
    sorted.forEach((c) => grid.appendChild(c));
  }

  function applyFilter() {
    const q = filter.value.trim().toLowerCase();
    let n = 0;
    cards.forEach((c) => {
      c.hidden = q !== "" && !c.dataset.text.includes(q);
      if (!c.hidden) n += 1;
    });
    shown.textContent = n + " of " + cards.length + " shown";
  }

  function open(card) {
    const d = card.querySelector("dialog");
    if (d && !d.open) d.showModal();
  }

  key.addEventListener("change", sort);
  dir.addEventListener("click", () => {
    const desc = dir.dataset.dir !== "desc";
    dir.dataset.dir = desc ? "desc" : "asc";
    dir.textContent = desc ? "highest first" : "lowest first";
    sort();
  });
  filter.addEventListener("input", applyFilter);
  grid.addEventListener("click", (e) => {
    const b = e.target.closest("button.open, .pics");  // the button, or a click on the card's pictures
    const card = b && !e.target.closest("dialog") ? b.closest("article.card") : null;
    if (card) {
      open(card);
      history.replaceState(null, "", "#" + card.id);
    }
  });
  document.querySelectorAll("dialog.detail").forEach((d) =>
    d.addEventListener("close", () => history.replaceState(null, "", location.pathname + location.search)));
  if (location.hash.startsWith("#c-")) {
    const c = document.getElementById(location.hash.slice(1));
    if (c) open(c);
  }
})();

// Filters the catalog's cards in the page: kind and category (one each), compatibility (every
// ticked target), technology (any ticked), and words of the search box (all of them).
(function () {
  "use strict";
  const form = document.getElementById("filters");
  const cards = Array.from(document.querySelectorAll("#cards .card"));
  const count = document.getElementById("count");
  const empty = document.getElementById("empty");

  function checked(name) {
    return Array.from(form.querySelectorAll(`input[name="${name}"]:checked`)).map((i) => i.value);
  }

  function apply() {
    const kind = checked("kind")[0] || "";
    const category = checked("category")[0] || "";
    const compatibility = checked("compatibility");
    const technology = checked("technology");
    const words = document.getElementById("q").value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const card of cards) {
      const has = (attr) => card.dataset[attr].split(" ");
      const visible =
        (!kind || card.dataset.kind === kind) &&
        (!category || card.dataset.category === category) &&
        compatibility.every((c) => has("compatibility").includes(c)) &&
        (technology.length === 0 || technology.some((t) => has("technology").includes(t))) &&
        words.every((w) => card.dataset.text.includes(w));
      card.hidden = !visible;
      if (visible) shown++;
    }
    count.textContent = `Showing ${shown} of ${cards.length} items.`;
    empty.hidden = shown !== 0;
  }

  form.addEventListener("input", apply);
  form.addEventListener("change", apply);
  apply();
})();

// Display equations wider than the text column (on a phone) are typeset smaller until they fit, down to
// MIN_SCALE of their size; an equation that would need more is broken by hand in the chapter (the browser test
// fails on it at 400 px). MathJax 3 has no automatic line breaking.
(function () {
  "use strict";
  var MIN_SCALE = 0.6;
  function fit() {
    var boxes = document.querySelectorAll('mjx-container[display="true"]');
    for (var i = 0; i < boxes.length; i++) {
      var box = boxes[i];
      if (box.dataset.baseSize === undefined) box.dataset.baseSize = box.style.fontSize || "100%";
      box.style.fontSize = box.dataset.baseSize;
      var need = box.scrollWidth, room = box.clientWidth;
      if (room > 0 && need > room + 1) {
        var scale = Math.max(MIN_SCALE, (0.98 * room) / need);
        box.style.fontSize = "calc(" + box.dataset.baseSize + " * " + scale.toFixed(3) + ")";
      }
    }
  }
  function whenTypeset() {
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      MathJax.startup.promise.then(fit);
    } else {
      setTimeout(whenTypeset, 100);
    }
  }
  var timer = null;
  window.addEventListener("load", whenTypeset);
  window.addEventListener("resize", function () {
    clearTimeout(timer);
    timer = setTimeout(fit, 100);
  });
})();

// Stripe's Payment Element on the card-update page. Card data goes from the browser to
// Stripe; our server only ever receives the SetupIntent or PaymentIntent id, and reads
// the intent back from Stripe before believing it.
(function () {
  "use strict";
  var form = document.getElementById("payment-form");
  if (!form || typeof Stripe === "undefined") { return; }
  var config = JSON.parse(form.dataset.config);
  var stripe = Stripe(config.publishableKey);
  var button = document.getElementById("submit");
  var message = document.getElementById("payment-message");
  var csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;

  function show(text) { message.textContent = text; message.hidden = false; button.disabled = false; }

  function complete(field, id) {
    var body = new URLSearchParams();
    body.append(field, id);
    body.append("csrfmiddlewaretoken", csrf);
    return fetch(config.completeUrl, {
      method: "POST", body: body, credentials: "same-origin", redirect: "follow",
      headers: { "X-CSRFToken": csrf },
    }).then(function () { window.location.reload(); });
  }

  if (config.kind === "payment" && config.status === "requires_action") {
    // The bank's check (3-D Secure) only: no new payment details needed.
    button.addEventListener("click", function (event) {
      event.preventDefault();
      button.disabled = true;
      stripe.handleNextAction({ clientSecret: config.clientSecret }).then(function (result) {
        if (result.error) { show(result.error.message); return; }
        complete("payment_intent", result.paymentIntent.id);
      });
    });
    return;
  }

  var elements = stripe.elements({ clientSecret: config.clientSecret });
  elements.create("payment", { layout: "tabs" }).mount("#payment-element");
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    button.disabled = true;
    var params = { elements: elements, redirect: "if_required", confirmParams: { return_url: config.returnUrl } };
    var confirm = config.kind === "payment" ? stripe.confirmPayment(params) : stripe.confirmSetup(params);
    confirm.then(function (result) {
      if (result.error) { show(result.error.message); return; }
      if (result.setupIntent) { return complete("setup_intent", result.setupIntent.id); }
      if (result.paymentIntent) { return complete("payment_intent", result.paymentIntent.id); }
    });
  });
})();

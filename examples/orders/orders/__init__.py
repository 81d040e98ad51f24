"""An example project on dawning-streams: orders, payments, and a web app that sends them."""

"""`sk-jax serve`: a local web page on one warm Stylizer (app), and the headless-Chromium driver of its test and benchmark (browser)."""

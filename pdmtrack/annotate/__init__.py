"""``pdmtrack annotate``: a local web app to click objects, track them, fix drift and export."""

"""The dashboard's insides: the views it shows (views.py), its server-sent feed (feed.py), and the
page's static files (static/: one HTML shell, one script, one stylesheet; no build step)."""

# Vercel's Python runtime serves the WSGI callable `app` of this file;
# it is the application the Procfile's web process ran.
from gettingstarted.wsgi import application as app  # noqa: F401

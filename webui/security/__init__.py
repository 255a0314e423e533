"""Exposure and file safety: the login and API credentials, what Gradio may serve.

``auth`` reads the credentials and guards the API; ``files`` sets what the UI may serve and refuses
remote fetches. ``webui.app.build_server`` applies both; ``webui.config.check_exposure`` decides
whether the app may start at all.
"""

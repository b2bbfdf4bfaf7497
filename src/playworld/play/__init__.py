"""Playing a learned world: prompts, named actions, rollouts to video, sessions and the web server.

Library modules here never import the server; :mod:`playworld.play.server` imports FastAPI only when
`playworld play` runs.
"""

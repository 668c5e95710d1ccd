"""The control-console HTTP API: stations and their live status, footage, exports, holds, audits,
accounts and the access log (调用登记). `create_app` in app.py builds it."""

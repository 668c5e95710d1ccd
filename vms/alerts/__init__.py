"""Alerts to people: rules over the recorder's evidence, alert states, and delivery to WeCom and DingTalk
robots, webhooks and e-mail (docs/design/alerts.md)."""

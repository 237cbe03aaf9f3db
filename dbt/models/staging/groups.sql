-- RudderStack's groups table: group calls from events.
{{ events_of_type('group') }}

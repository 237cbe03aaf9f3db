-- RudderStack's identifies table: identify calls from events.
{{ events_of_type('identify') }}

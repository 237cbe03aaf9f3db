-- RudderStack's screens table: screen calls from events.
{{ events_of_type('screen') }}

-- RudderStack's tracks table: track calls from events.
{{ events_of_type('track') }}

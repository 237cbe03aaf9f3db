{#- RudderStack's per-call tables (tracks, identifies, pages, screens, groups) as a
    selection of events: one layout, one place. -#}
{% macro events_of_type(call_type) %}
select
    message_id as id,
    message_id,
    anonymous_id,
    user_id,
    distinct_id,
    workspace_id,
    "timestamp",
    original_timestamp,
    sent_at,
    received_at,
    loaded_at as uuid_ts,
    event,
    properties,
    context
from {{ source('etl', 'events') }}
where type = '{{ call_type }}'
{% endmacro %}

-- The warehouse view flow_success_daily (by UTC day and workspace), as a dbt model.
select * from {{ source('etl', 'flow_success_daily') }}

// Starts GraphiQL against the endpoint that served this page: queries and mutations over HTTP,
// subscriptions over graphql-ws on the same path. What is typed in the Headers panel goes with
// HTTP requests and into the websocket's connection_init payload, so
// { "Authorization": "Bearer <token>" } works for subscriptions too.
(function () {
  var endpoint = window.location.origin + window.location.pathname;
  var fetcher = GraphiQL.createFetcher({
    url: endpoint,
    subscriptionUrl: endpoint.replace(/^http/, 'ws'),
  });
  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultEditorToolsVisibility: true,
      shouldPersistHeaders: true,
    }),
  );
})();
